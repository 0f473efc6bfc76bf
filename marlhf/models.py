"""Models and tokenizers for every layer: built in process or loaded locally, never downloaded.

- :func:`resolve_device`: the one place that turns ``"auto"``/``"cuda"``/``"cpu"`` into a device.
- :func:`load_model` and :func:`load_tokenizer`: the one loader of ``transformers`` models and
  tokenizers from a local folder or GGUF file (``local_files_only=True`` always).
- :func:`train_bpe_tokenizer` trains a byte-level BPE on a local corpus (by default the Python
  standard library's own source, present on every machine) and caches it in a folder;
  :func:`default_codec` is the small one text tasks use when given no tokenizer.
- :func:`tiny_gpt2` builds a small randomly initialised GPT-2 whose special tokens match a
  codec or tokenizer.

This module imports only :mod:`marlhf.tokenization`: envs, options, agents and training all use it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from marlhf.tokenization import HFCodec, TokenCodec

__all__ = [
    "ModelLoadError",
    "as_plain_model",
    "default_codec",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "stdlib_source_files",
    "tiny_gpt2",
    "train_bpe_tokenizer",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

#: ``kind`` of :func:`load_model` -> the ``transformers`` auto class that loads it.
MODEL_KINDS: dict[str, str] = {
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "base": "AutoModel",
}
ModelKind = Literal["causal_lm", "sequence_classification", "base"]

#: Vocabulary size of :func:`default_codec` (small: tests and env checks).
DEFAULT_VOCAB_SIZE = 1024


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device ``device`` names.

    ``"auto"`` is the current CUDA device when one is visible, else the CPU. A CUDA device without
    an index gets the current one, so ``"cuda"`` and ``"cuda:0"`` compare equal.

    :raises ValueError: CUDA is requested but not available, or the name is not a device.
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


class ModelLoadError(ValueError, FileNotFoundError):
    """A model or tokenizer path that cannot be used (what is missing is always a file)."""


def _folder(path: str | Path, field: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(
            f"{field}: {str(path)!r} does not exist (not a local folder; nothing is downloaded)"
        )
    if not folder.is_dir():
        raise ModelLoadError(f"{field}: {str(path)!r} is not a folder")
    return folder


def load_model(
    path: str | Path,
    kind: ModelKind = "causal_lm",
    gguf_file: str | None = None,
    field: str = "model.path",
    **kwargs: Any,
) -> Any:
    """A ``transformers`` model from a local folder, or from a GGUF file inside ``path``.

    :param path: a folder written by ``save_pretrained`` (``config.json`` and weights), or the
        folder holding ``gguf_file``.
    :param kind: which auto class loads it: ``"causal_lm"``, ``"sequence_classification"`` or
        ``"base"`` (the bare encoder/decoder).
    :param gguf_file: file name of a GGUF model inside ``path``; its weights come back as an
        ordinary float model (:func:`as_plain_model`).
    :param field: the config field or argument named in errors.
    :param kwargs: passed to ``from_pretrained`` (e.g. ``num_labels=1``).
    :raises ModelLoadError: the folder or file is missing, or the folder has no ``config.json``.
    """
    import transformers

    if kind not in MODEL_KINDS:
        raise ValueError(f"load_model: kind={kind!r}; valid: {', '.join(MODEL_KINDS)}")
    auto = getattr(transformers, MODEL_KINDS[kind])
    folder = _folder(path, field)
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            raise ModelLoadError(f"{field}: {str(folder / gguf_file)!r} does not exist")
        model = auto.from_pretrained(
            str(folder), gguf_file=gguf_file, local_files_only=True, **kwargs
        )
        return as_plain_model(model)
    if not (folder / "config.json").is_file():
        hint = ""
        if (folder / "model").is_dir():
            hint = f"; did you mean {str(folder / 'model')!r}?"
        raise ModelLoadError(f"{field}: {str(path)!r} is not a model folder (no config.json){hint}")
    return auto.from_pretrained(str(folder), local_files_only=True, **kwargs)


def as_plain_model(model: Any) -> Any:
    """Mark a model loaded from GGUF as the ordinary float model it is.

    transformers de-quantizes GGUF weights to float on loading but keeps the GGUF "quantizer",
    which makes ``save_pretrained`` refuse; dropping it lets checkpoints and the reference copy
    be saved like any model (the weights are unchanged).
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def pad_with_eos(tokenizer: Any, field: str = "tokenizer") -> Any:
    """Set the tokenizer's pad token to its EOS token when it has none (causal LMs often don't).

    :raises ValueError: it has neither.
    """
    if getattr(tokenizer, "pad_token_id", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise ValueError(f"{field}: the tokenizer has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(
    path: str | Path, gguf_file: str | None = None, field: str = "model.path"
) -> Any:
    """The tokenizer saved in a local folder (or inside a GGUF file there), pad token set.

    :raises ModelLoadError: the folder is missing or holds no tokenizer files.
    """
    from transformers import AutoTokenizer

    folder = _folder(path, field)
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            raise ModelLoadError(f"{field}: {str(folder / gguf_file)!r} does not exist")
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file, local_files_only=True)
    else:
        if not any((folder / name).exists() for name in TOKENIZER_FILES):
            raise ModelLoadError(
                f"{field}: model folder {str(path)!r} has no tokenizer (none of "
                f"{', '.join(TOKENIZER_FILES)}); save one beside the model with "
                "tokenizer.save_pretrained(folder)"
            )
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return pad_with_eos(tok, field)


SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>")


def default_cache_dir() -> Path:
    """``$MARLHF_CACHE`` or ``~/.cache/marlhf``."""
    return Path(os.environ.get("MARLHF_CACHE", Path.home() / ".cache" / "marlhf"))


def stdlib_source_files(limit: int | None = None) -> list[Path]:
    """The standard library's ``.py`` files (sorted, tests excluded): a corpus of real code."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("test")
    ) + sorted(p for p in root.glob("*/*.py") if "test" not in p.parts[-2])
    return files[:limit] if limit is not None else files


def _read_corpus(files: list[Path], max_chars: int) -> Iterator[str]:
    total = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are not UTF-8; skipping them loses nothing we need
        yield text
        total += len(text)
        if total >= max_chars:
            return


def train_bpe_tokenizer(
    vocab_size: int = 4096,
    files: list[Path] | None = None,
    cache_dir: Path | str | None = None,
    max_chars: int = 4_000_000,
) -> Any:
    """Train (or load from cache) a byte-level BPE ``PreTrainedTokenizerFast``.

    :param vocab_size: total vocabulary including the special tokens ``<|pad|>`` (id 0) and
        ``<|endoftext|>`` (id 1, EOS and BOS).
    :param files: text files to train on; default: the standard library's source.
    :param cache_dir: folder for the cached tokenizer; default :func:`default_cache_dir`.
    :param max_chars: stop reading the corpus after this many characters.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"train_bpe_tokenizer: vocab_size={vocab_size} must be >= 300 (256 bytes)")
    files = files if files is not None else stdlib_source_files()
    if not files:
        raise ValueError("train_bpe_tokenizer: no corpus files given")
    key = hashlib.sha1(
        f"{vocab_size}|{max_chars}|{'|'.join(str(f) for f in files)}".encode()
    ).hexdigest()[:12]
    folder = Path(cache_dir or default_cache_dir()) / f"bpe-{vocab_size}-{key}"
    if (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_read_corpus(files, max_chars), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        bos_token=SPECIAL_TOKENS[1],
        unk_token=None,
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    fast.save_pretrained(str(tmp))
    if folder.exists():  # another process finished first; keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(folder)
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def tiny_gpt2(
    vocab: int | TokenCodec | Any,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 1024,
    seed: int = 0,
) -> Any:
    """A randomly initialised ``GPT2LMHeadModel`` sized for CPU tests.

    :param vocab: a vocabulary size, a :class:`~marlhf.tokenization.TokenCodec`, or a
        ``transformers`` tokenizer; pad/EOS ids are copied into the config from the latter two.
    :param n_positions: the context length (prompt + response) in tokens.
    :param seed: torch seed for the initial weights.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if isinstance(vocab, int):
        vocab_size, pad_id, eos_id = vocab, None, None
    elif isinstance(vocab, TokenCodec):
        vocab_size, pad_id, eos_id = vocab.vocab_size, vocab.pad_token_id, vocab.eos_token_id
    else:
        vocab_size, pad_id, eos_id = len(vocab), vocab.pad_token_id, vocab.eos_token_id
    if vocab_size < 2:
        raise ValueError(f"tiny_gpt2: vocab size {vocab_size} must be >= 2")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )
    devices = (
        [torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_available() else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model


@lru_cache(maxsize=1)
def default_codec() -> HFCodec:
    """The codec of text tasks given no tokenizer: a 1024-token byte-level BPE trained on part of
    the standard library (cached in ``$MARLHF_CACHE``; a few seconds the first time)."""
    tok = train_bpe_tokenizer(
        vocab_size=DEFAULT_VOCAB_SIZE, files=stdlib_source_files(limit=60), max_chars=1_500_000
    )
    return HFCodec(tok)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model`` (``transformers``' decoder layers, the units it
    checkpoints and FSDP shards one by one); none with a ``transformers`` too old to mark
    them."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
