"""Distributed helpers on 2 gloo ranks forked from the test: each result equals what one
process computes on the concatenated data."""

from __future__ import annotations

import pytest
import torch

from marlhf.algorithms.losses import masked_mean
from marlhf.credit.advantages import global_whiten, whiten
from marlhf.parallel import distributed as dist_utils
from tests.agents import dist_helpers
from tests.agents.ranks import run_ranks

ROWS = 3  # rows per rank


def _data(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float[W * ROWS, 5], mask bool[...])`` with ragged masks and junk on padding."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(world_size * ROWS, 5, generator=gen)
    lengths = torch.randint(1, 6, (world_size * ROWS,), generator=gen)
    mask = torch.arange(5)[None, :] < lengths[:, None]
    return x.masked_fill(~mask, float("nan")), mask


def _mine(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * ROWS : (rank + 1) * ROWS]


def _normalisers(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    x, mask = _data(world_size)
    x, mask = _mine(x, rank), _mine(mask, rank)
    info = dist_utils.world()
    assert (info.rank, info.world_size) == (rank, world_size)
    weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5))
    # A token-mean loss: the local mean times this rank's share, gradients summed over ranks.
    y = torch.where(mask, x, torch.zeros_like(x)) * weight
    loss = masked_mean(y, mask) * dist_helpers.local_share(mask)
    loss.backward()
    dist_utils.all_reduce_gradients([weight])
    assert weight.grad is not None
    return {
        "mean": dist_helpers.global_masked_mean(x, mask),
        "whitened": global_whiten(x, mask),
        "loss": dist_utils.global_sum(loss.detach()),
        "grad": weight.grad,
    }


@pytest.mark.slow  # two gloo ranks (42-46 s each when spawned; forked now, a few s)
def test_global_normalisers_equal_one_process_on_all_rows() -> None:
    results = run_ranks(_normalisers, 2)
    x, mask = _data(2)
    weight = torch.linspace(-1.0, 1.0, 5, requires_grad=True)
    loss = masked_mean(torch.where(mask, x, torch.zeros_like(x)) * weight, mask)
    loss.backward()
    whitened = whiten(torch.nan_to_num(x), mask)
    for rank, got in enumerate(results):
        torch.testing.assert_close(got["mean"], masked_mean(torch.nan_to_num(x), mask))
        torch.testing.assert_close(got["whitened"], _mine(whitened, rank), atol=1e-6, rtol=0)
        torch.testing.assert_close(got["loss"].float(), loss.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(got["grad"], weight.grad, atol=1e-6, rtol=0)


def _decisions(rank: int, world_size: int) -> dict[str, object]:
    out: dict[str, object] = {
        "any_rank1": dist_utils.any_rank(rank == 1),
        "any_none": dist_utils.any_rank(False),
        "seed": dist_utils.rank_seed(5),
        "gathered": dist_utils.all_gather_objects({"rank": rank}),
        "broadcast": dist_helpers.broadcast_object(f"from {rank}"),
        "minibatches": [
            t.tolist() for t in dist_utils.shard_minibatches(4, 2, torch.Generator().manual_seed(0))
        ],
    }
    error = FloatingPointError("non-finite policy loss (nan)") if rank == 1 else None
    try:
        dist_utils.raise_together(error)
    except FloatingPointError as exc:
        out["raised"] = str(exc)
    dist_utils.raise_together(None)  # nobody failed: nobody raises (and nobody hangs)
    return out


@pytest.mark.slow  # two gloo ranks (42-46 s each when spawned; forked now, a few s)
def test_decisions_are_taken_by_every_rank_together() -> None:
    results = run_ranks(_decisions, 2)
    for rank, got in enumerate(results):
        assert got["any_rank1"] is True and got["any_none"] is False
        assert got["seed"] == 5 + dist_utils.SEED_STRIDE * rank
        assert got["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert got["broadcast"] == "from 0"
        # NaN on rank 1 stops both, with the same message naming the rank.
        assert got["raised"] == "rank 1: non-finite policy loss (nan)"
    # Together the ranks' shares of each minibatch are one process's minibatch of 8 rows.
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    for k, rows in enumerate(order.view(4, 2).tolist()):
        union = results[0]["minibatches"][k] + [r + 4 for r in results[1]["minibatches"][k]]
        assert sorted(union) == sorted(rows)


def test_one_process_is_the_world_size_one_case(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    info = dist_utils.init_from_env()
    assert info == dist_utils.WorldInfo() and info.is_main and not info.distributed
    assert dist_utils.rank_seed(11) == 11
    _, mask = _data(1)
    assert dist_helpers.local_share(mask) == 1.0
    assert not dist_utils.any_rank(False) and dist_utils.any_rank(True)
    with pytest.raises(FloatingPointError, match=r"^boom$"):
        dist_utils.raise_together(FloatingPointError("boom"))
    # The minibatches are one permutation of the rows, as LMRolloutBuffer.get draws them.
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = torch.cat(list(dist_utils.shard_minibatches(6, 2, gen_a)))
    assert torch.equal(got, torch.randperm(6, generator=gen_b))


def test_shards_must_divide_evenly_and_keep_groups_whole() -> None:
    two = dist_utils.WorldInfo(rank=1, world_size=2)
    assert dist_utils.shard_size(8, "num_envs", two) == 4
    assert dist_utils.shard_size(8, "num_envs", two, group=4) == 4
    with pytest.raises(ValueError, match=r"num_envs=7 is not divisible by the world size 2"):
        dist_utils.shard_size(7, "num_envs", two)
    with pytest.raises(ValueError, match=r"split a group of group_size=4.*multiple of 8"):
        dist_utils.shard_size(4, "num_envs", two, group=4)
