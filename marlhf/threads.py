"""The torch CPU thread policy: one thread per process unless the user chose otherwise.

torch starts with one thread per core. On a machine whose cores other processes already use
(a shared server, or ``marlhf compare``'s own worker processes), those threads wait on each
other: ``benchmarks/threads.py`` measured tiny-model training 10-60x slower with torch's default
than with one thread on a loaded 2-core machine (``benchmarks/results/threads.json``, load
averages beside the numbers). The models this project trains on CPU are small, so one thread
per process also wins or ties on an idle machine.

The policy (:func:`apply_thread_policy`) runs when a ``marlhf`` command starts and when an agent
(``PPO``, ``MAPPO``) is built. In order, the first that applies decides:

1. a count the caller passes (``marlhf train --set num_threads=4``);
2. the ``MARLHF_NUM_THREADS`` environment variable: a count, or ``torch`` to keep torch's
   default;
3. ``OMP_NUM_THREADS`` set in the environment (torch already follows it): left alone;
4. a count set earlier in this process with ``torch.set_num_threads``: left alone;
5. otherwise :data:`DEFAULT_THREADS`.
"""

from __future__ import annotations

import os

import torch

#: The environment variable that overrides the default: a thread count, or ``torch``.
ENV_VAR = "MARLHF_NUM_THREADS"
#: Threads per process when nothing else is asked for (see the module doc for the numbers).
DEFAULT_THREADS = 1
#: The count this module last saw or set: torch's count at import, then each count applied. A
#: different count later means that the user called ``torch.set_num_threads`` themselves.
_last_count = torch.get_num_threads()


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
    return min(DEFAULT_THREADS, os.cpu_count() or 1)


def apply_thread_policy(requested: int | None = None) -> int:
    """Set torch's CPU thread count by the policy (module doc); returns the count in effect.

    Idempotent: once a count is applied, later calls keep it (and any count the user sets
    with ``torch.set_num_threads`` afterwards).

    :param requested: a count the caller was given (e.g. ``num_threads`` of ``marlhf train``).
    """
    global _last_count
    count = chosen_threads(requested)
    if count is not None:
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        _last_count = count
    return torch.get_num_threads()
