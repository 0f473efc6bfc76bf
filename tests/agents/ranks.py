"""Run a function on several gloo ranks spawned from a test (one torch thread each).

``run_ranks(fn, world_size, *args)`` starts ``world_size`` processes that join one gloo group
and call ``fn(rank, world_size, *args)``; it returns their results in rank order, or raises
with every failing rank's traceback. ``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out: Any
) -> None:
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
            "HF_HUB_OFFLINE": "1",
        }
    )
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        # Plain pickle bytes: a tensor sent through the queue as such would be shared memory
        # that vanishes when this process exits before the parent reads it.
        out.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:
        out.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, ...)]``, each in its own process."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, out), daemon=True)
        for r in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, tuple[bool, Any]] = {}
    try:
        for _ in procs:
            rank, ok, value = out.get(timeout=TIMEOUT_S)
            results[rank] = (ok, value)
    except queue.Empty:
        pass
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    missing = sorted(set(range(world_size)) - set(results))
    failed = {r: v for r, (ok, v) in results.items() if not ok}
    if missing or failed:
        detail = "\n".join(f"--- rank {r}:\n{tb}" for r, tb in sorted(failed.items()))
        raise AssertionError(f"ranks failed {sorted(failed)}, no answer from {missing}\n{detail}")
    return [pickle.loads(results[r][1]) for r in range(world_size)]
