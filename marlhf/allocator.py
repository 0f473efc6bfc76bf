"""The C allocator policy: large blocks get their own memory map, returned when freed (glibc).

glibc serves a ``malloc`` of at least its *mmap threshold* with a memory map of its own, which
``free`` returns to the system at once; smaller blocks come from its heap, whose freed memory
it keeps for reuse. The threshold starts at 128 KiB but is dynamic: each time a mapped block is
freed, the threshold rises to that block's size (up to 32 MiB). A training iteration frees
activations of a few MiB each, so after the first update glibc serves them from its heap, and
the heap holds freed memory it cannot give back or reuse for blocks of other sizes. On
SmolLM2-135M at batch 32 that held about a gigabyte more resident memory at the update's peak
than the same run with the threshold fixed (``benchmarks/memory.py``,
``benchmarks/results/memory_smollm2.json``; ``docs/performance.md``, "Memory").

So marlhf fixes the threshold at :data:`DEFAULT_THRESHOLD` (``mallopt(M_MMAP_THRESHOLD)``, which
also turns the dynamic rise off) when an agent of at least :data:`MIN_PARAMETERS` parameters is
built (:func:`apply_allocator_policy`). Small models are left alone: their blocks are a few
hundred KiB, freed and made again at every step, and a map of their own for each (its pages
faulted in and zeroed by the kernel every time) made a 2-layer toy GPT-2's PPO iteration about
1.5x slower (``benchmarks/allocator.py --model tiny``, ``benchmarks/results/allocator_tiny.json``),
while the memory it saves there is a few MB. The setting is process-wide and lasts until the
process ends; it changes where blocks live, never a computed value. In order, the first that
applies decides:

1. the ``MARLHF_MMAP_THRESHOLD`` environment variable: a threshold in bytes (at most
   :data:`MAX_THRESHOLD`), or ``glibc`` to keep glibc's own (dynamic) threshold;
2. glibc's own settings in the environment (``MALLOC_MMAP_THRESHOLD_``,
   ``MALLOC_TOP_PAD_``-style variables or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``):
   left alone, glibc has read them;
3. otherwise :data:`DEFAULT_THRESHOLD` for a model of at least :data:`MIN_PARAMETERS`
   parameters, glibc's own threshold for a smaller one.

Other C libraries (musl, macOS, Windows) are left alone: :func:`apply_allocator_policy` returns
``None`` there.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

#: The environment variable that overrides the default: a threshold in bytes, or ``glibc``.
ENV_VAR = "MARLHF_MMAP_THRESHOLD"
#: The threshold (bytes) applied when nothing else is asked for: glibc's starting value.
DEFAULT_THRESHOLD = 128 * 1024
#: The smallest model (parameters) the default threshold is applied for (module doc): the
#: SmolLM2-135M architecture (135M; 42M with 4 of its blocks, where the cost was measured) is
#: above it, the toy GPT-2s of the tests and the demo (about 1M) far below.
MIN_PARAMETERS = 20_000_000
#: The largest threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MAX_THRESHOLD = 32 * 1024 * 1024
#: ``mallopt``'s parameter number for the mmap threshold (glibc's ``M_MMAP_THRESHOLD``).
M_MMAP_THRESHOLD = -3
#: glibc's environment variables that set its malloc parameters (read at process start).
GLIBC_MALLOC_VARS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)

#: The threshold this module applied in this process (None: none yet).
_applied: int | None = None


def glibc() -> Any | None:
    """The running C library through ``ctypes`` when it is glibc (it has
    ``gnu_get_libc_version`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # (Windows: no process-wide handle)
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def threshold_from_env() -> int | None:
    """The threshold ``MARLHF_MMAP_THRESHOLD`` asks for; None when unset or ``glibc``.

    :raises ValueError: naming the variable and the valid values when it holds anything else.
    """
    text = os.environ.get(ENV_VAR, "").strip()
    if text in ("", "glibc"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= MAX_THRESHOLD:
        raise ValueError(
            f"{ENV_VAR}={text!r}: expected a threshold in bytes from 1 to {MAX_THRESHOLD}, or "
            "'glibc' for glibc's own dynamic threshold"
        )
    return value


def glibc_settings_given() -> bool:
    """Whether the environment sets glibc's malloc parameters itself (module doc, rule 2)."""
    if any(os.environ.get(name, "").strip() for name in GLIBC_MALLOC_VARS):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def chosen_threshold(num_parameters: int) -> int | None:
    """The threshold the policy picks for a model of ``num_parameters`` parameters, or None to
    leave the allocator alone (module doc)."""
    from_env = threshold_from_env()
    if from_env is not None:
        return from_env
    if os.environ.get(ENV_VAR, "").strip() == "glibc" or glibc_settings_given():
        return None
    return DEFAULT_THRESHOLD if num_parameters >= MIN_PARAMETERS else None


def applied_threshold() -> int | None:
    """The threshold :func:`apply_allocator_policy` set in this process, or None."""
    return _applied


def apply_allocator_policy(num_parameters: int) -> int | None:
    """Fix glibc's mmap threshold by the policy (module doc) for a model of ``num_parameters``
    parameters; returns the threshold in effect from this module (None: glibc's own, or not
    glibc).

    Idempotent: a later call with the same choice does nothing more.

    :raises ValueError: when ``MARLHF_MMAP_THRESHOLD`` is invalid (:func:`threshold_from_env`).
    :raises OSError: when glibc refuses the value.
    """
    global _applied
    threshold = chosen_threshold(num_parameters)
    if threshold is None or threshold == _applied:
        return _applied
    libc = glibc()
    if libc is None:
        return None
    if libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)) != 1:
        raise OSError(f"glibc's mallopt refused M_MMAP_THRESHOLD={threshold} ({ENV_VAR})")
    _applied = threshold
    return _applied
