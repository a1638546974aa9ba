"""Model folders: a transformers ``config.json`` beside its safetensors (one file or shards),
as ``save_pretrained`` writes them and the Hugging Face cache holds them; or timm's
``config.json`` (``architecture``, ``pretrained_cfg``) as ``timm``'s ``save_for_hf`` writes it.

The architecture is built from the config (the class its ``architectures`` names, looked up in
``transformers`` itself, never imported from elsewhere) so every tensor gets its traced
default. The config is data from the folder: it is read with ``local_files_only`` (nothing is
downloaded), capped in size, and code it points to (``auto_map``) runs only with
``--unsafe-load`` (``trust_remote_code``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from initscope.errors import InitScopeError, TargetError

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "CONFIG_NAME",
    "MAX_CONFIG_BYTES",
    "adapter_base",
    "from_config",
    "is_adapter_folder",
    "is_model_folder",
    "is_pretrained_model",
    "is_timm_config",
    "model_class",
]

CONFIG_NAME = "config.json"
# What PEFT's save_pretrained writes beside adapter_model.safetensors (peft/utils/constants.py
# CONFIG_NAME): the adapter's settings and base_model_name_or_path, the model it adapts.
ADAPTER_CONFIG_NAME = "adapter_config.json"
# A real config.json is a few KB (a LLaMA-70B's: 0.7 KB); a larger one is not read.
MAX_CONFIG_BYTES = 4 * 2**20


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder with a transformers ``config.json`` in it."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def is_pretrained_model(module: object) -> bool:
    """Whether ``module`` is a transformers PreTrainedModel (by its classes' names: nothing
    imports transformers to ask)."""
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(module).__mro__
    )


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder of a PEFT adapter: an ``adapter_config.json`` and no
    model ``config.json``."""
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG_NAME).is_file() and not is_model_folder(p)


def adapter_base(folder: str | os.PathLike[str]) -> str | None:
    """The ``base_model_name_or_path`` an adapter folder's config names (a Hub id or a
    path), or None when it names none or cannot be read."""
    try:
        base = _read_config(Path(folder), ADAPTER_CONFIG_NAME).get("base_model_name_or_path")
    except (InitScopeError, OSError):  # unreadable, oversized, not JSON: names none
        return None
    return base if isinstance(base, str) and base else None


def _read_config(folder: Path, name: str = CONFIG_NAME) -> dict[str, Any]:
    from initscope.io.checkpoints import read_regular

    text = read_regular(folder / name, MAX_CONFIG_BYTES)  # never blocks on a FIFO
    if len(text) > MAX_CONFIG_BYTES:
        raise TargetError(
            f"{folder / name} is over {MAX_CONFIG_BYTES // 2**20} MiB",
            f"a {name} is a few KB; check the folder",
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise TargetError(f"{folder / name} is not JSON: {exc}", "re-save it") from None
    if not isinstance(data, dict):
        raise TargetError(f"{folder / name} is not a JSON object", "re-save it")
    return data


def model_class(config: Any) -> type:
    """The model class a config names: the first of its ``architectures`` that transformers
    exports as a PreTrainedModel, else the base model of its ``model_type``."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    try:  # the base model of the config's model_type
        found: Any = transformers.AutoModel._model_mapping[type(config)]
    except KeyError:
        found = None
    found = found[0] if isinstance(found, tuple) and found else found
    if not isinstance(found, type):
        raise TargetError(
            f"transformers has no model class for {type(config).__name__}",
            "pass --model pkg.module:Class to say which model the folder holds",
        )
    return found


def from_config(folder: str, trust_remote_code: bool = False) -> Any:
    """The model ``folder``'s config describes, freshly initialized (not loaded: the
    weights are read from the folder's safetensors as a checkpoint): a transformers model,
    or a timm model when the config is timm's (``architecture`` and no ``model_type``)."""
    path = Path(folder)
    data = _read_config(path)
    if is_timm_config(data):
        return _timm_model(path, data)
    try:
        import transformers
    except ImportError:
        raise TargetError(
            f"{folder} is a transformers model folder, and transformers is not installed",
            "pip install transformers, or pass --model pkg.module:Class",
        ) from None
    if data.get("auto_map") and not trust_remote_code:
        raise TargetError(
            "its config names code (auto_map), which runs only with --unsafe-load",
            "if you trust the folder, rerun with --unsafe-load",
        )
    if trust_remote_code and data.get("auto_map"):
        config = transformers.AutoConfig.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=True
        )
    else:  # the dict already read and checked: transformers does not reopen the file
        model_type = data.get("model_type")
        try:
            config_class = transformers.CONFIG_MAPPING[str(model_type)]
        except (KeyError, TypeError):
            raise TargetError(
                f"{path / CONFIG_NAME} names model_type {model_type!r}, which this "
                "transformers does not know",
                "upgrade transformers, or pass --model pkg.module:Class",
            ) from None
        config = config_class.from_dict(data)
    cls = model_class(config)
    return cls(config)


def is_timm_config(data: Mapping[str, Any]) -> bool:
    """Whether a config.json's content is timm's: timm's ``save_for_hf``
    (timm/models/_hub.py) writes ``architecture`` (one model name) and ``pretrained_cfg``,
    and no transformers ``model_type``."""
    return isinstance(data.get("architecture"), str) and "model_type" not in data


# A timm model name: what timm registers (timm/models/_registry.py names are identifiers,
# with a ".tag" for pretrained variants); anything else in a config is refused unread.
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100})?")


def _timm_model(path: Path, data: Mapping[str, Any]) -> Any:
    """The timm model a timm config.json names, built as timm's own hub loader builds it
    (timm/models/_hub.py load_model_config_from_hf, then create_model): its ``architecture``
    with the config's ``model_args`` and ``num_classes``, never with pretrained weights."""
    name = data["architecture"]
    where = path / CONFIG_NAME
    if not _TIMM_NAME.fullmatch(name):
        raise TargetError(
            f"{where} names architecture {name[:80]!r}, which is not a timm model name",
            "re-save the folder with timm, or pass --model pkg.module:Class",
        )
    try:
        import timm
    except Exception as exc:  # timm imports torchvision, which may not import beside torch
        raise TargetError(
            f"{path} is a timm model folder, and timm does not import here "
            f"({type(exc).__name__}: {str(exc)[:120]}): pip install timm with a torchvision "
            "built for this torch",
            "or pass --model pkg.module:Class",
        ) from None
    base = name.split(".")[0]
    if not timm.is_model(base):
        raise TargetError(
            f"{where} names architecture {name!r}, which this timm ({timm.__version__}) does "
            "not know",
            "upgrade timm, or pass --model pkg.module:Class",
        )
    args = data.get("model_args", {})
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise TargetError(f"{where}: model_args is not an object", "re-save the folder with timm")
    kwargs: dict[str, Any] = dict(args)
    if isinstance(data.get("num_classes"), int) and "num_classes" not in kwargs:
        kwargs["num_classes"] = data["num_classes"]
    return timm.create_model(base, pretrained=False, **kwargs)
