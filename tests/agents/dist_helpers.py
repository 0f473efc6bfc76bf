"""Collective helpers only the distributed tests use (moved out of ``marlhf.parallel.distributed``,
which keeps what training calls): a masked mean over every rank, a rank's share of the real
tokens, and a broadcast of one object."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from marlhf.parallel import distributed as dist_utils


def _several_ranks() -> bool:
    return dist_utils.initialized() and dist.get_world_size() > 1


def global_masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the True entries of ``mask`` on every rank (no gradient; 0 if none).

    :param x: ``float[...]``; entries off the mask are ignored, whatever they hold.
    :param mask: ``bool[...]`` of the same shape.
    """
    local = torch.where(mask, x.detach(), torch.zeros_like(x)).sum().double()
    both = torch.stack([local, mask.sum().double()])
    dist_utils.all_reduce_sum(both)
    return (both[0] / both[1].clamp(min=1)).to(x.dtype)


def local_share(mask: Tensor) -> float:
    """This rank's fraction of the real tokens, ``local / global``; 1.0 with one process.

    A loss averaged over this rank's tokens, times this share, is this rank's part of the mean
    over the global batch; summing the gradients over ranks then gives the global mean's.
    """
    if not _several_ranks():
        return 1.0
    total = float(dist_utils.global_count(mask))
    return float(mask.sum()) / total if total > 0 else 0.0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _several_ranks():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
