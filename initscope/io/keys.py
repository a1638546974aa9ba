"""Which saved key holds each of a model's state-dict names.

A checkpoint's keys are the model's names as saved, give or take the DDP ``module.`` and
torch.compile ``_orig_mod.`` prefixes (:meth:`Checkpoint.keyed`). transformers 5 also
renames keys when it loads (ViT's ``attention.attention.query`` is ``attention.q_proj`` in
the model, GPT-NeoX's ``embed_out`` is ``lm_head``): for its models, transformers' own
conversion mapping for the model (``get_model_conversion_mapping``, as ``from_pretrained``
applies it) renames the saved keys, never a table kept here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from initscope.io.checkpoints import Checkpoint
from initscope.io.folders import is_pretrained_model

__all__ = ["model_keys"]


def model_keys(model: torch.nn.Module, ckpt: Checkpoint) -> dict[str, str]:
    """The saved key of each of ``model``'s state-dict names that ``ckpt`` holds: as saved
    (prefixes stripped where that fits better), or renamed as transformers renames them
    when that matches more of the model's names."""
    state = model.state_dict(keep_vars=True)
    keys = ckpt.keyed(state.keys())
    if set(keys) <= state.keys():
        return keys
    renamed = _transformers_renamed(model, keys, state)
    if renamed is not None and len(renamed.keys() & state.keys()) > len(keys.keys() & state):
        return renamed
    return keys


def _transformers_renamed(
    model: torch.nn.Module, keys: Mapping[str, str], state: Mapping[str, torch.Tensor]
) -> dict[str, str] | None:
    """``keys`` with each name renamed as transformers' loader renames it for ``model``;
    None for a model that is not transformers', or a mapping that merges or splits tensors
    (a converter: no one saved key per name)."""
    if not is_pretrained_model(model):
        return None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:  # transformers 4 renames nothing at load
        return None
    try:
        transforms = get_model_conversion_mapping(model)  # type: ignore[arg-type]
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        prefix = getattr(model, "base_model_prefix", None) or None
        meta = dict(state)
        out: dict[str, str] = {}
        for name, saved in keys.items():
            new, converted = rename_source_key(name, renamings, converters, prefix, meta)
            if converted is not None:
                return None
            out[new] = saved
    except Exception:  # an API of transformers that changed: the keys as saved
        return None
    return out if len(out) == len(keys) else None
