"""The torch CPU thread policy: one thread per process, and threads that sleep while waiting.

torch starts one thread per core, and OpenMP lets a waiting thread spin. On a machine whose
cores other processes already use (a shared server, CI, ``marlhf compare``'s own workers) those
threads wait on each other: ``benchmarks/threads.py`` measured the same tiny training stopped
after minutes with torch's default where it took seconds otherwise. On this project's models one
thread per process was as fast as two or faster, on the idle machine and on the loaded one,
except a compare with two threads per worker on the idle machine (``docs/threads.md``; the
tables come from ``benchmarks/results/threads_idle.json`` and ``threads.json``). So the default
is :data:`DEFAULT_THREADS` thread per process. marlhf also sets ``OMP_WAIT_POLICY=PASSIVE``
when it is imported before torch (``marlhf/__init__.py``), so that a count you raise does not
spin on a busy machine (:func:`passive_wait` says whether it took effect).

The policy (:func:`apply_thread_policy`) runs when a ``marlhf`` command starts, in each of
``compare``'s workers (``threads_per_worker``) and when an agent (``PPO``, ``MAPPO``) is built.
In order, the first that applies decides:

1. a count the caller passes (``marlhf train --set num_threads=4``);
2. the ``MARLHF_NUM_THREADS`` environment variable: a count, or ``torch`` to keep torch's
   threading as it is (its thread count and OpenMP's wait policy);
3. ``OMP_NUM_THREADS`` set in the environment (torch already follows it): left alone;
4. a count set earlier in this process with ``torch.set_num_threads``: left alone;
5. otherwise :func:`default_threads`.
"""

from __future__ import annotations

import os
import sys

import torch

#: The environment variable that overrides the default: a thread count, or ``torch``.
ENV_VAR = "MARLHF_NUM_THREADS"
#: Threads per process when nothing else is asked for (see the module doc for the numbers).
DEFAULT_THREADS = 1
#: The count this module last saw or set: torch's count at import, then each count applied. A
#: different count later means that the user called ``torch.set_num_threads`` themselves.
_last_count = torch.get_num_threads()
#: Whether the policy has applied a count in this process; later calls without one keep it.
_applied = False


def threads_from_env() -> int | None:
    """The count ``MARLHF_NUM_THREADS`` asks for; None when unset or ``torch``.

    :raises ValueError: naming the variable and the valid values when it holds anything else.
    """
    text = os.environ.get(ENV_VAR, "").strip()
    if text in ("", "torch"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{ENV_VAR}={text!r}: expected a thread count >= 1, or 'torch' for torch's default"
        )
    return value


def chosen_threads(requested: int | None = None) -> int | None:
    """The thread count the policy picks, or None to leave torch's setting alone.

    :param requested: a count the caller was given (a config key); wins over everything.
    """
    if requested is not None:
        return requested
    from_env = threads_from_env()
    if from_env is not None:
        return from_env
    if os.environ.get(ENV_VAR, "").strip() == "torch":
        return None
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    if torch.get_num_threads() != _last_count:
        return None  # the user set it in this process
    if _applied:
        return None  # a count was applied earlier in this process (e.g. compare's
        # threads_per_worker before it builds the agents): keep it
    return default_threads()


def usable_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def passive_wait() -> bool:
    """Whether torch's OpenMP threads sleep while they wait in this process: the variable
    ``OMP_WAIT_POLICY=PASSIVE`` was set before marlhf was imported (by you, or by a parent
    process), or marlhf set it before torch was loaded (OpenMP reads it only then)."""
    # The package root records both facts when it is imported (before this module can be); read
    # from sys.modules, as threads sits below the root (docs/design.md, "Layout").
    marlhf = sys.modules.get("marlhf")
    given = getattr(marlhf, "_WAIT_POLICY_GIVEN", None)
    if given is not None:
        return given.strip().upper() == "PASSIVE"
    now = os.environ.get("OMP_WAIT_POLICY", "").strip().upper()
    return now == "PASSIVE" and not getattr(marlhf, "_TORCH_PRELOADED", True)


def default_threads() -> int:
    """:data:`DEFAULT_THREADS`, never more than the usable cores."""
    return max(1, min(DEFAULT_THREADS, usable_cores()))


def apply_thread_policy(requested: int | None = None) -> int:
    """Set torch's CPU thread count by the policy (module doc); returns the count in effect.

    Idempotent: once a count is applied, later calls keep it (and any count the user sets
    with ``torch.set_num_threads`` afterwards).

    :param requested: a count the caller was given (e.g. ``num_threads`` of ``marlhf train``).
    """
    global _last_count, _applied
    count = chosen_threads(requested)
    if count is not None:
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        _last_count = count
        _applied = True
    return torch.get_num_threads()
