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
