"""How initscope names what it prints and writes: a tensor's module and parameter, a dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["dtype_name", "split_name"]


def split_name(name: str) -> tuple[str, str]:
    """``encoder.0.weight`` → (``encoder.0``, ``weight``): the module path and the tensor's
    own name (an empty module path for a top-level tensor)."""
    module, _, param = name.rpartition(".")
    return module, param


def dtype_name(dtype: torch.dtype) -> str:
    """``float32``, as JSON and tables show a dtype (torch's str() adds ``torch.``)."""
    return str(dtype).removeprefix("torch.")
