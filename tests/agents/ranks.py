"""Run a function on several gloo ranks launched from a test (one torch thread each).

``run_ranks(fn, world_size, *args)`` starts ``world_size`` Python processes (plain subprocesses,
all waited for: no helper process such as multiprocessing's resource tracker outlives the call,
which the sandbox tests check for) that join one gloo group and call
``fn(rank, world_size, *args)``; it returns their results in rank order, or raises with every
failing rank's traceback. ``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(folder: str, rank: int, world_size: int, port: int) -> None:
    """One rank: join the group, run the job in ``folder``, write ``result<rank>.pkl``."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
        }
    )
    result: tuple[bool, Any]
    try:
        fn, args = pickle.loads((Path(folder) / "job.pkl").read_bytes())
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = (True, fn(rank, world_size, *args))
    except BaseException:
        result = (False, traceback.format_exc())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    (Path(folder) / f"result{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, ...)]``, each in its own process."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "job.pkl").write_bytes(pickle.dumps((fn, args)))
        code = (
            "import sys; from tests.agents.ranks import _rank_main; "
            "_rank_main(sys.argv[1], *map(int, sys.argv[2:]))"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, folder, str(r), str(world_size), str(port)],
                env=env,
                cwd=ROOT,
            )
            for r in range(world_size)
        ]
        for proc in procs:
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for other in procs:
                    other.kill()
                    other.wait()
                raise AssertionError(f"ranks did not finish within {TIMEOUT_S} s") from None
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
