"""``run_ranks`` (tests/agents/ranks.py): forked ranks start as fresh processes would, in the
repository, and a failing rank's traceback reaches the test."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from tests.agents.ranks import ROOT, run_ranks


def _fresh_state(rank: int, world_size: int) -> dict[str, Any]:
    import torch.distributed as dist

    return {
        "rank": (dist.get_rank(), dist.get_world_size(), os.environ["RANK"]),
        "draw": torch.rand(3),
        "threads": torch.get_num_threads(),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }


def _fails_on_rank_1(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("rank one refuses")
    return rank


def test_forked_ranks_start_from_a_fresh_processs_random_stream_in_the_repository(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(123)  # the test's own stream: a rank must not inherit it
    results = run_ranks(_fresh_state, 2)
    fresh = torch.Generator().manual_seed(torch.Generator().initial_seed())
    want = torch.rand(3, generator=fresh)
    for rank, got in enumerate(results):
        assert got["rank"] == (rank, 2, str(rank))
        assert torch.equal(got["draw"], want)
        assert got["threads"] == 1
        assert got["cwd"] == str(ROOT)
    assert len({got["pid"] for got in results} | {os.getpid()}) == 3  # own processes
    assert os.getcwd() == str(tmp_path)  # the test process is left as it was


def test_a_failing_rank_raises_with_its_traceback() -> None:
    with pytest.raises(AssertionError, match=r"(?s)ranks failed \[1\].*rank one refuses"):
        run_ranks(_fails_on_rank_1, 2)
