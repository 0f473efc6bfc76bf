"""Shared fixtures. Tests run on the CPU, offline, with tiny in-process models."""

from __future__ import annotations

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

    cache = tmp_path_factory.mktemp("tokenizer-cache")
    return train_bpe_tokenizer(
        vocab_size=1024, files=stdlib_source_files(limit=60), cache_dir=cache, max_chars=1_500_000
    )


@pytest.fixture(scope="session")
def bpe_codec(bpe_tokenizer):
    from marlhf.tokenization import HFCodec

    return HFCodec(bpe_tokenizer)


# ------------------------------------------------------------------ test tiers
#: Seconds after which a test belongs in the `slow` tier (`make test-fast` skips that tier).
FAST_LIMIT = float(os.environ.get("MARLHF_FAST_LIMIT", "10"))
_too_slow: list[tuple[str, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember the tests outside the slow tier whose call took longer than FAST_LIMIT."""
    if report.when == "call" and report.duration > FAST_LIMIT and "slow" not in report.keywords:
        _too_slow.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List them at the end: mark each `@pytest.mark.slow`, or make it faster (a loaded machine
    inflates durations: judge on an idle one)."""
    if not _too_slow:
        return
    terminalreporter.section(f"tests over {FAST_LIMIT:g} s outside the slow tier")
    for nodeid, seconds in sorted(_too_slow, key=lambda x: -x[1]):
        terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
