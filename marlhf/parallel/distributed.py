"""Data parallelism on ``torch.distributed``: world info, rank seeds, global normalisers.

Launched by ``torchrun`` (gloo on the CPU, NCCL on CUDA); without it the world is one process and
every helper here is the identity, so one process is the world-size-1 case of the same code.

Each rank holds a shard of the rollout's episodes. Whatever normalises over the batch is computed
over all ranks, so results do not depend on the layout: loss means divide by the global token
count, gradients are summed across ranks (flattened ``all_reduce`` buckets, as CleanRL's
``ppo_atari_multigpu.py``), whitening uses global moments, and every decision that ends an
update (``target_kl``, a non-finite value) is taken by all ranks together, so none is left
waiting in a collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

#: Distance between the seed streams of consecutive ranks (an algorithm draws several
#: generators from ``seed + k`` for small ``k``; the stride keeps ranks' streams apart).
SEED_STRIDE = 1_000


@dataclass(frozen=True)
class WorldInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> WorldInfo:
    """The current world: from ``torch.distributed`` when it is initialised, else one process."""
    if not initialized():
        return WorldInfo()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return WorldInfo(dist.get_rank(), dist.get_world_size(), local)


def init_from_env(backend: str | None = None) -> WorldInfo:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    Without those variables (a plain ``python`` run) nothing is initialised and the world is one
    process. Already initialised: the current world.

    :param backend: ``None`` picks NCCL when CUDA is available, else gloo.
    """
    if initialized():
        return world()
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return WorldInfo()
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE={world_size} must be >= 1 (set by torchrun)")
    use_cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return world()


def device_for(info: WorldInfo, device: str | torch.device) -> torch.device:
    """``"auto"`` on a multi-GPU node means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank if info.distributed else 0)
        return torch.device("cpu")
    return torch.device(device)


def rank_seed(seed: int, info: WorldInfo | None = None) -> int:
    """``seed`` offset by the rank, so ranks sample different prompts and tokens (rank 0 keeps
    ``seed``: a one-process run is unchanged)."""
    info = world() if info is None else info
    return int(seed) + SEED_STRIDE * info.rank


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the ranks (in place; returned as is with one process)."""
    if initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: Tensor) -> Tensor:
    """``tensor``'s elementwise maximum over the ranks (in place)."""
    if initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def global_sum(value: Tensor | float, device: torch.device | None = None) -> Tensor:
    """The sum of a scalar over the ranks, as a float64 0-dim tensor (a copy; no gradient)."""
    total = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone()
    return all_reduce_sum(total)


def global_count(mask: Tensor) -> Tensor:
    """The number of True entries of ``mask`` over all ranks (float64 0-dim tensor)."""
    return global_sum(mask.sum(), device=mask.device)


def global_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, int]:
    """Masked mean, unbiased variance and count over every rank (two passes, as one process
    computes them: the global mean first, then the squared deviations from it)."""
    zeros = torch.zeros_like(x)
    totals = torch.stack([torch.where(mask, x, zeros).sum().double(), mask.sum().double()])
    all_reduce_sum(totals)
    count = int(totals[1])
    if count < 2:
        raise ValueError(
            f"global_moments: needs at least 2 real entries over all ranks, got {count}"
        )
    mean = (totals[0] / count).to(x.dtype)
    centred = torch.where(mask, x - mean, zeros)
    square = all_reduce_sum((centred * centred).sum().double())
    return mean, (square / (count - 1)).to(x.dtype), count


def global_token_mean(value: Tensor | float, share: float) -> float:
    """A per-rank token mean (a loss, ``approx_kl``) turned into the mean over all ranks'
    tokens, given this rank's share of them (its real tokens / all ranks' real tokens);
    ``value`` itself with one process."""
    if not (initialized() and dist.get_world_size() > 1):
        return float(value)
    return float(global_sum(float(value) * share))


def global_sums(values: list[float]) -> list[float]:
    """Each of ``values`` summed over the ranks, in one collective (float64); as given with one
    process."""
    if not values or not (initialized() and dist.get_world_size() > 1):
        return list(values)
    return [float(v) for v in all_reduce_sum(torch.tensor(values, dtype=torch.float64))]


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is True on any (for ``target_kl`` and stop decisions)."""
    if not (initialized() and dist.get_world_size() > 1):
        return bool(flag)
    value = torch.tensor(1 if flag else 0, dtype=torch.int64, device=device)
    return bool(all_reduce_max(value))


def raise_together(error: BaseException | None) -> None:
    """Raise on every rank when any rank has an ``error`` (none is left waiting in a collective).

    Every rank raises the same exception type and message: the first failing rank's, prefixed
    with that rank (``"rank 1: non-finite ..."``). With one process: ``error`` itself, if any.
    The exception raised has ``raised_together = True`` (every rank is at the same point: a
    collective after it is safe).
    """
    if not (initialized() and dist.get_world_size() > 1):
        if error is not None:
            error.raised_together = True  # type: ignore[attr-defined]
            raise error
        return
    failed = any_rank(error is not None)
    if not failed:
        return
    mine = None if error is None else (type(error).__name__, str(error))
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    rank, (kind, message) = next((r, m) for r, m in enumerate(reports) if m is not None)
    together = _ERRORS.get(kind, RuntimeError)(f"rank {rank}: {message}")
    together.raised_together = True  # type: ignore[attr-defined]
    raise together from error


_ERRORS: dict[str, type[BaseException]] = {
    "FloatingPointError": FloatingPointError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "TypeError": TypeError,
}


#: Gradients are all-reduced in buckets of at most this many bytes (PyTorch DDP's default cap):
#: one flat copy of the whole gradient would hold a second model-sized buffer at the step.
BUCKET_BYTES = 25 * 2**20


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in flattened ``all_reduce`` buckets of at
    most :data:`BUCKET_BYTES` (one bucket for a small model; a parameter larger than the cap is
    a bucket of its own).

    A parameter without a gradient on this rank (e.g. no tokens in its minibatch share) counts
    as zeros; afterwards every rank holds the same gradients. No-op with one process.
    """
    if not (initialized() and dist.get_world_size() > 1):
        return
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in parameters:
        if not p.requires_grad:
            continue
        nbytes = p.numel() * p.element_size()
        if bucket and size + nbytes > BUCKET_BYTES:
            _all_reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(p)
        size += nbytes
    if bucket:
        _all_reduce_bucket(bucket)


def _all_reduce_bucket(params: list[torch.nn.Parameter]) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    del grads
    for p in params:  # (each gradient is replaced by a view of the reduced buffer below)
        p.grad = None
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        # A view of the reduced buffer (no copy; a parameter of another dtype gets one).
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    if not (initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if initialized() and dist.get_world_size() > 1:
        dist.barrier()


def on_main(info: WorldInfo | None = None) -> bool:
    """Whether this process logs and saves (rank 0, or the only process)."""
    return (world() if info is None else info).is_main


def shard_size(total: int, what: str, info: WorldInfo | None = None, group: int = 1) -> int:
    """This rank's share of ``total`` items (``num_envs``), checked to divide evenly and, with
    ``group > 1``, to keep every group of ``group`` consecutive items on one rank.

    :raises ValueError: naming ``what``, the values and the valid choices.
    """
    info = world() if info is None else info
    w = info.world_size
    if total % w != 0:
        raise ValueError(
            f"{what}={total} is not divisible by the world size {w}; each rank drives "
            f"{what}/world_size envs: use a multiple of {w}"
        )
    per_rank = total // w
    if group > 1 and per_rank % group != 0:
        raise ValueError(
            f"{what}={total} over world size {w} gives {per_rank} envs a rank, which would split a "
            f"group of group_size={group} across ranks; use a multiple of {w * group}"
        )
    return per_rank


def shard_minibatches(
    n_local: int,
    batch_size: int | None,
    generator: torch.Generator | None,
    info: WorldInfo | None = None,
) -> Iterator[Tensor]:
    """This rank's rows of each global minibatch, as local row indices (``int64[k]``, maybe 0).

    Rank ``r`` holds the global rows ``[r * n_local, (r + 1) * n_local)``. One permutation of
    all global rows is drawn from ``generator`` (seeded alike on every rank) and cut into
    minibatches of ``batch_size`` rows, as one process with every row would: so a minibatch is
    the same set of episodes whatever the layout. With one process this is exactly a random
    permutation of ``n_local`` rows cut into minibatches.

    :param batch_size: global minibatch size in rows; ``None``: all rows at once.
    """
    info = world() if info is None else info
    total = n_local * info.world_size
    size = total if batch_size is None else batch_size
    if size <= 0 or total % size != 0:
        raise ValueError(
            f"batch_size={size} must be a positive divisor of the rollout's global num_envs={total}"
        )
    order = torch.randperm(total, generator=generator)
    low = info.rank * n_local
    for begin in range(0, total, size):
        rows = order[begin : begin + size]
        yield rows[(rows >= low) & (rows < low + n_local)] - low


def destroy() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if initialized():
        dist.destroy_process_group()
