"""Shared fixtures. Tests run on the CPU, offline, with tiny in-process models."""

from __future__ import annotations

import csv
import fcntl
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# One thread: on the 2-core CI machine two torch threads make small ops 5-10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A 1024-token byte-level BPE trained on part of the standard library (a few seconds)."""
    from marlhf.models import stdlib_source_files, train_bpe_tokenizer

    # Under pytest-xdist every worker has its own base temp folder below one shared by the run:
    # the first worker trains the tokenizer there, under a lock, and the others load its copy.
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    cache = root / "tokenizer-cache"
    cache.mkdir(exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return train_bpe_tokenizer(
            vocab_size=1024,
            files=stdlib_source_files(limit=60),
            cache_dir=cache,
            max_chars=1_500_000,
        )


@pytest.fixture(scope="session")
def bpe_codec(bpe_tokenizer):
    from marlhf.tokenization import HFCodec

    return HFCodec(bpe_tokenizer)


# ------------------------------------------------------------------ test tiers
#: Seconds after which a test belongs in the `slow` tier (`make test-fast` skips that tier).
FAST_LIMIT = float(os.environ.get("MARLHF_FAST_LIMIT", "10"))
#: A CSV file to write every test's wall and CPU seconds to (unset: none is written).
TIMES_CSV = os.environ.get("MARLHF_TEST_TIMES")
_too_slow: list[tuple[str, float, float]] = []
_times: list[tuple[str, str, float, float, float, bool]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tier runs first (a stable sort: the order within each tier is kept). Under
    pytest-xdist (`make test`) a long test collected last, such as the docs' code blocks in
    tests/test_docs.py, starts when the other worker has nothing left and runs alone; begun
    first, the long tests share both workers and the short ones fill the gaps at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


#: Each phase's CPU seconds (own, finished children's), from its hook to its report.
_CPU = pytest.StashKey[dict[str, tuple[float, float]]]()


def _cpu_now() -> tuple[float, float]:
    """CPU seconds so far: this process's (user + system), and its waited-for children's.

    On a loaded machine a test's wall time grows with the load and its CPU time much less, so
    the CPU time tells what an idle machine would take (children running in parallel on 2 cores
    take less wall time than their CPU sum)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the phase's CPU seconds (own, children) to its report as a user property."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    spent = item.stash.get(_CPU, {}).pop(call.when, None)
    if spent is not None:
        report.user_properties.append(("cpu_s", spent))


def _phase(when: str):
    @pytest.hookimpl(hookwrapper=True)
    def hook(item: pytest.Item):
        own, children = _cpu_now()
        yield
        own2, children2 = _cpu_now()
        item.stash.setdefault(_CPU, {})[when] = (own2 - own, children2 - children)

    return hook


pytest_runtest_setup = _phase("setup")
pytest_runtest_call = _phase("call")
pytest_runtest_teardown = _phase("teardown")


def _cpu_of(report: pytest.TestReport) -> tuple[float, float]:
    """The phase's CPU seconds (own, children) from its report (xdist sends it from a worker)."""
    for key, value in report.user_properties:
        if key == "cpu_s" and isinstance(value, (tuple, list)):
            return float(value[0]), float(value[1])
    return 0.0, 0.0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember the tests outside the slow tier whose call took longer than FAST_LIMIT, and
    every phase's times when :data:`TIMES_CSV` is set."""
    own, children = _cpu_of(report)
    slow = "slow" in report.keywords
    if report.when == "call" and report.duration > FAST_LIMIT and not slow:
        _too_slow.append((report.nodeid, report.duration, own + children))
    if TIMES_CSV:
        _times.append((report.nodeid, report.when, report.duration, own, children, slow))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List them at the end: mark each `@pytest.mark.slow`, or make it faster (a loaded machine
    inflates wall times: judge on an idle one, or by the CPU seconds shown beside them)."""
    if TIMES_CSV and _times:
        with open(TIMES_CSV, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow(["nodeid", "phase", "wall_s", "cpu_s", "children_cpu_s", "slow"])
            for nodeid, when, wall, own, children, slow in _times:
                out.writerow([nodeid, when, f"{wall:.3f}", f"{own:.3f}", f"{children:.3f}", +slow])
    if not _too_slow:
        return
    terminalreporter.section(f"tests over {FAST_LIMIT:g} s outside the slow tier")
    for nodeid, seconds, cpu in sorted(_too_slow, key=lambda x: -x[1]):
        terminalreporter.write_line(f"{seconds:7.1f} s  (cpu {cpu:6.1f} s)  {nodeid}")
