"""`marlhf rm`: a Bradley-Terry reward model from chosen/rejected pairs.

Each JSON line is ``{"prompt": ..., "chosen": ..., "rejected": ...}`` (the answers continue the
prompt) or HH-RLHF style ``{"chosen": ..., "rejected": ...}`` (whole dialogues). The model is a
``transformers`` sequence-classification model with one output, read at the last real token of
``prompt + answer``; the loss is ``-log sigmoid(r_chosen - r_rejected)``. A seeded fraction of
the pairs is held out and the held-out accuracy (``r_chosen > r_rejected``) is reported.

The saved folder (``save_pretrained`` of the model and its tokenizer) is what
``marlhf.envs.builtin.reward_model.RewardModelReward`` loads. It is built beside ``output_dir`` and
renamed into place at the end: an interrupted run leaves nothing a re-run would trust.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

import numpy as np

from marlhf.config.commands import RmConfig
from marlhf.config.parse import to_dict
from marlhf.models import ModelKind, load_model, resolve_device, tiny_gpt2, train_bpe_tokenizer
from marlhf.runs.builders import has_pretrained, load_tokenizer, resolve_gguf
from marlhf.runs.errors import during_run
from marlhf.runs.io import (
    DataError,
    atomic_write_json,
    check_output_dir,
    read_jsonl,
    staged_output,
)

RESULT_FILE = "marlhf_rm.json"


def read_pairs(path: str) -> list[tuple[str, str]]:
    """``(chosen_text, rejected_text)`` per JSON line, the prompt (if any) put in front.

    :raises DataError: a missing file, a malformed line or a missing field (file and line).
    """
    if not path:
        raise DataError("data: no preference file given; e.g. --set data=pairs.jsonl")
    records = read_jsonl(path, required=["chosen", "rejected"])
    pairs: list[tuple[str, str]] = []
    for i, r in enumerate(records):
        prompt = r.get("prompt", "")
        if not isinstance(prompt, str):
            raise DataError(f"{path}: record {i + 1}: field 'prompt' must be a string")
        pairs.append((prompt + r["chosen"], prompt + r["rejected"]))
    if len(pairs) < 2:
        raise DataError(f"{path}: {len(pairs)} pairs; need at least 2 (one to hold out)")
    return pairs


def _build_model(config: RmConfig, tokenizer: Any) -> Any:
    import torch
    from transformers import GPT2ForSequenceClassification

    if has_pretrained(config.model):
        gguf = resolve_gguf(config.model)
        kind: ModelKind = "sequence_classification"
        if gguf is not None:
            model = load_model(
                gguf[0], kind, gguf_file=gguf[1], field="model.gguf_file", num_labels=1
            )
        else:
            model = load_model(str(config.model.path), kind, num_labels=1)
    else:
        seed = config.seed if config.model.init_seed is None else config.model.init_seed
        lm_config = tiny_gpt2(
            tokenizer,
            n_layer=config.model.n_layer,
            n_embd=config.model.n_embd,
            n_head=config.model.n_head,
            n_positions=max(config.max_length, 1024),  # scorers may read longer texts than training
            seed=seed,
        ).config
        lm_config.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2ForSequenceClassification(lm_config)
    # the classifier finds each row's last real token through the pad id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _scores(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: Any) -> Any:
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    ).to(device)
    return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0]


def pair_accuracy(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, batch_size: int
) -> float:
    """Fraction of ``pairs`` whose chosen text scores strictly higher than the rejected one."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    wins = 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            s = _scores(
                model, tokenizer, [c for c, _ in chunk] + [r for _, r in chunk], max_length, device
            )
            wins += int((s[: len(chunk)] > s[len(chunk) :]).sum())
    return wins / len(pairs)


def run_rm(config: RmConfig) -> dict[str, Any]:
    """Train the reward model, save it to ``config.output_dir``, return the accuracies.

    :returns: ``{"train_loss", "eval_accuracy_before", "eval_accuracy", "train_pairs",
        "eval_pairs", "output_dir"}``.
    """
    import torch
    import torch.nn.functional as F

    if not 0.0 < config.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={config.eval_fraction} must be in (0, 1)")
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 1")
    pairs = read_pairs(config.data)
    out = check_output_dir(config.output_dir, RESULT_FILE)
    with staged_output(out) as work:
        if has_pretrained(config.model):
            tokenizer = load_tokenizer(config.model)
        else:
            corpus = work / "corpus.txt"
            corpus.write_text("\n".join(t for p in pairs for t in p), encoding="utf-8")
            tokenizer = train_bpe_tokenizer(
                vocab_size=config.vocab_size, files=[corpus], cache_dir=work / "tokenizer-cache"
            )
            shutil.rmtree(work / "tokenizer-cache")
            corpus.unlink()
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # keep the answer, which decides the preference
        device = resolve_device(config.device)
        model = _build_model(config, tokenizer).to(device)

        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(pairs))
        n_eval = max(1, round(config.eval_fraction * len(pairs)))
        eval_pairs = [pairs[i] for i in order[:n_eval]]
        train_pairs = [pairs[i] for i in order[n_eval:]]
        with during_run():  # an error from here on is the run's, not the config's (exit 1)
            before = pair_accuracy(
                model, tokenizer, eval_pairs, config.max_length, config.batch_size
            )

            torch.manual_seed(config.seed)
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
            losses: list[float] = []
            for _ in range(config.epochs):
                model.train()
                perm = rng.permutation(len(train_pairs))
                for i in range(0, len(perm), config.batch_size):
                    chunk = [train_pairs[j] for j in perm[i : i + config.batch_size]]
                    texts = [c for c, _ in chunk] + [r for _, r in chunk]
                    s = _scores(model, tokenizer, texts, config.max_length, device)
                    loss = -F.logsigmoid(s[: len(chunk)] - s[len(chunk) :]).mean()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"rm: non-finite loss {loss.item()} at step {len(losses)}; "
                            "lower learning_rate"
                        )
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    losses.append(float(loss.detach()))
            accuracy = pair_accuracy(
                model, tokenizer, eval_pairs, config.max_length, config.batch_size
            )

        model.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
        tail = losses[-max(1, len(losses) // 10) :]
        result: dict[str, Any] = {
            "train_loss": float(np.mean(tail)) if tail else math.nan,
            "eval_accuracy_before": before,
            "eval_accuracy": accuracy,
            "train_pairs": len(train_pairs),
            "eval_pairs": len(eval_pairs),
            "output_dir": str(out),
        }
        atomic_write_json(work / RESULT_FILE, {"config": to_dict(config), "result": result})
    return result
