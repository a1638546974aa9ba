"""``--distributed``: the per-tensor work of a run spread over the ranks of a ``torchrun``
job (any number of nodes), with PyTorch's own engine.

Every rank builds the same model and opens the same checkpoint, takes the tensors
:func:`assign` gives it (largest first, each to the least loaded rank), reads only those,
and the mergeable results are gathered with ``all_gather_object`` over a ``gloo`` process
group initialized from torchrun's environment. Rank 0 renders; the others print nothing.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from initscope.errors import InitScopeError

__all__ = [
    "Group",
    "assign",
    "finish",
    "init_from_env",
    "map_over_ranks",
]

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Group:
    """This process's place in the job."""

    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def init_from_env() -> Group:
    """Join the torchrun job (``gloo``, so CPUs suffice), or say how to start one."""
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise InitScopeError(
            f"--distributed needs torchrun's environment ({', '.join(missing)} not set)",
            "start it as: torchrun --nproc_per_node=2 $(which initscope) report TARGET "
            "--distributed",
        )
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Group(dist.get_rank(), dist.get_world_size())


def finish() -> None:
    """Leave the job cleanly: wait for every rank, then destroy the process group. A rank
    that exits while gloo still holds connections to its peers aborts (SIGABRT) as they go,
    which torchrun reports as a failed job; so no rank leaves before the others are done.
    Nothing happens when no group was joined."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def assign(sizes: Sequence[int], world: int) -> list[int]:
    """The rank of each item: largest first, each to the rank with the least so far."""
    load = [0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += sizes[i]
    return owner


def map_over_ranks(
    task: Callable[[int], T],
    sizes: Sequence[int],
    group: Group,
    local_map: Callable[[Callable[[int], T], Sequence[int]], list[T]],
) -> list[T]:
    """``[task(i) ...]`` with each rank computing its share (through ``local_map``, given
    the share's indices; it may use --workers) and every rank receiving all results, in
    order."""
    import torch.distributed as dist

    from initscope.parallel.workers import Batched

    owner = assign(sizes, group.world)
    mine = [i for i in range(len(sizes)) if owner[i] == group.rank]
    failed: BaseException | None = None
    share: tuple[dict[int, T], BaseException | None]
    try:
        share_task = task.over(mine) if isinstance(task, Batched) else (lambda j: task(mine[j]))
        values = local_map(share_task, mine)
        share = (dict(zip(mine, values, strict=True)), None)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        # A rank whose share fails still joins the gather, carrying its error: had it left
        # for the exit barrier (finish) while the others wait here, every rank would wait
        # for gloo's timeout (30 minutes) instead of stopping on the error.
        failed = exc
        share = ({}, _portable(exc, group.rank))
    gathered: list[Any] = [None] * group.world
    dist.all_gather_object(gathered, share)
    if failed is not None:
        raise failed
    merged: dict[int, T] = {}
    for part, error in gathered:
        if error is not None:  # the first failing rank's error, on every rank
            raise error
        merged.update(part)
    return [merged[i] for i in range(len(sizes))]


def _portable(exc: BaseException, rank: int) -> BaseException:
    """``exc`` as the other ranks re-raise it: an InitScopeError whole (it pickles with its
    class, message and hint), anything else as a RuntimeError naming the rank and error."""
    if isinstance(exc, InitScopeError):
        try:
            pickle.dumps(exc)
        except Exception:  # an argument that does not pickle: its words suffice
            return InitScopeError(exc.one_line())
        return exc
    text = " ".join(str(exc).split())[:300]
    return RuntimeError(f"rank {rank} failed: {type(exc).__name__}: {text}")
