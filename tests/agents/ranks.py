"""Run a function on several gloo ranks launched from a test (one torch thread each).

``run_ranks(fn, world_size, *args)`` forks ``world_size`` processes from the test's process
(each starts with every module the test already imported, instead of importing torch,
transformers and marlhf again: that import was most of a rank's time) that join one gloo group
and call ``fn(rank, world_size, *args)``; it returns their results in rank order, or raises with
every failing rank's traceback. All ranks are waited for: no helper process (such as
multiprocessing's resource tracker) outlives the call, which the sandbox tests check for.

A forked rank starts from the test process's state, so it resets what a fresh process would
have had and a test may have changed: torch's global random stream (its default seed), one
torch thread, the working folder (the repository) and the environment variables below. The
test process runs torch on one thread (tests/conftest.py), so no OpenMP thread team exists
that a forked child could not use. ``fn`` must be a module-level function, as it was when the
ranks were spawned (a rank never needs to import it, but the contract is kept).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parents[2]
#: Environment variables every rank gets (with the rank's own MASTER_*/RANK/WORLD_SIZE).
RANK_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(
    folder: str, rank: int, world_size: int, port: int, job: tuple[Callable[..., Any], tuple]
) -> None:
    """One rank: join the group, run ``job`` (``fn, args``), write ``result<rank>.pkl``."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.manual_seed(torch.Generator().initial_seed())  # a fresh process's global stream
    os.environ.update(
        {
            **RANK_ENV,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
        }
    )
    result: tuple[bool, Any]
    try:
        os.chdir(ROOT)
        fn, args = job
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = (True, fn(rank, world_size, *args))
    except BaseException:
        result = (False, traceback.format_exc())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    (Path(folder) / f"result{rank}.pkl").write_bytes(pickle.dumps(result))


def _fork_rank(folder: str, rank: int, world_size: int, port: int, job: tuple) -> int:
    """Fork one rank; the child runs :func:`_rank_main` and leaves with ``os._exit`` (no
    pytest or atexit handler of the test process runs in it)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _rank_main(folder, rank, world_size, port, job)
        code = 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed capture stream must not stop the exit
                stream.flush()
        os._exit(code)


def _wait(pids: list[int]) -> None:
    """Wait for every rank; past :data:`TIMEOUT_S`, kill them all (and reap them) and fail."""
    deadline = time.monotonic() + TIMEOUT_S
    left = set(pids)
    while left:
        for pid in list(left):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                left.discard(pid)
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            raise AssertionError(f"ranks did not finish within {TIMEOUT_S} s")
        time.sleep(0.02)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, ...)]``, each in its own process."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        job = (fn, args)
        _wait([_fork_rank(folder, r, world_size, port, job) for r in range(world_size)])
        results: dict[int, tuple[bool, Any]] = {}
        for r in range(world_size):
            path = Path(folder) / f"result{r}.pkl"
            if path.is_file():
                results[r] = pickle.loads(path.read_bytes())
    missing = sorted(set(range(world_size)) - set(results))
    failed = {r: v for r, (ok, v) in results.items() if not ok}
    if missing or failed:
        detail = "\n".join(f"--- rank {r}:\n{tb}" for r, tb in sorted(failed.items()))
        raise AssertionError(f"ranks failed {sorted(failed)}, no answer from {missing}\n{detail}")
    return [results[r][1] for r in range(world_size)]
