"""`marlhf sft`: causal-LM fine-tuning on local text or on a task's solutions, to warm-start a
policy.

The texts (whole files, or one field of each JSON line) are tokenised, joined with EOS and cut
into blocks of ``block_size`` tokens; a seeded fraction of the blocks is held out for the eval
loss. With ``task.id`` the data are instead ``task.examples`` (prompt, solution) pairs that the
task writes (:mod:`marlhf.commands.sft_data`), one sequence each, with the loss on the solution
and its EOS only (the prompt is masked); ``sft_examples.jsonl`` in the result folder lists
them. Training runs through ``transformers``' ``Trainer``. With ``model.path`` null a byte-level
BPE is trained on the data and a tiny GPT-2 is built for it, so
``marlhf sft --set data=[...stdlib files...]`` makes a small code model from nothing.

The result folder holds the model and its tokenizer (``save_pretrained``),
``marlhf_sft.json`` (config and losses) and ``log.jsonl`` (the trainer's logs, which the command
also prints on stderr: stdout carries the result only); it is written beside and renamed into
place at the end, so an interrupted run never leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from marlhf.config.commands import SftConfig
from marlhf.config.parse import to_dict
from marlhf.models import tiny_gpt2, train_bpe_tokenizer
from marlhf.runs.builders import has_pretrained, load_causal_lm, load_tokenizer
from marlhf.runs.errors import during_run
from marlhf.runs.io import (
    DataError,
    atomic_write_json,
    check_output_dir,
    read_jsonl,
    read_text_file,
    staged_output,
    write_jsonl,
)

RESULT_FILE = "marlhf_sft.json"
#: The trainer's logs (loss, learning rate, ...), one JSON object a line, in the output folder.
LOG_FILE = "log.jsonl"


def read_texts(files: list[str], text_field: str = "text") -> list[str]:
    """The documents of ``files``: one per JSON line (``.jsonl``) or one per other file.

    :raises DataError: for a missing file, a malformed line (file and line number), no text.
    """
    if not files:
        raise DataError("data: no files given; e.g. --set 'data=[corpus.txt]'")
    texts: list[str] = []
    for name in files:
        if name.endswith(".jsonl"):
            texts.extend(r[text_field] for r in read_jsonl(name, required=[text_field]))
        else:
            texts.append(read_text_file(name))
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"data: the files {files} hold no text")
    return texts


def make_blocks(token_lists: list[list[int]], eos_id: int, block_size: int) -> np.ndarray:
    """Join documents with EOS and cut into ``int64[n_blocks, block_size]`` (tail dropped)."""
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eos_id)
    n = len(stream) // block_size
    if n == 0:
        raise DataError(
            f"data: {len(stream)} tokens in all, fewer than one block of block_size={block_size}"
        )
    return np.asarray(stream[: n * block_size], dtype=np.int64).reshape(n, block_size)


def _new_model(config: SftConfig, tokenizer: Any) -> Any:
    """A tiny GPT-2 for ``tokenizer`` sized by ``config.model`` (the run's seed by default)."""
    init_seed = config.model.init_seed
    return tiny_gpt2(
        tokenizer,
        n_layer=config.model.n_layer,
        n_embd=config.model.n_embd,
        n_head=config.model.n_head,
        n_positions=max(config.block_size, 1024),  # RL prompts run longer than blocks
        seed=config.seed if init_seed is None else init_seed,
    )


def _text_data(config: SftConfig, texts: list[str], work: Path) -> tuple[Any, list[dict[str, Any]]]:
    """``(tokenizer, rows)`` of the texts: blocks of ``block_size`` tokens, loss on all."""
    import torch

    if has_pretrained(config.model):
        tokenizer = load_tokenizer(config.model)
    else:
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join(texts), encoding="utf-8")
        tokenizer = train_bpe_tokenizer(
            vocab_size=config.vocab_size, files=[corpus], cache_dir=work / "tokenizer-cache"
        )
        shutil.rmtree(work / "tokenizer-cache")
        corpus.unlink()
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = make_blocks(ids, eos, config.block_size)
    rows = [{"input_ids": torch.from_numpy(b), "labels": torch.from_numpy(b)} for b in blocks]
    return tokenizer, rows


class LogLines(TrainerCallback):
    """The trainer's logs as JSON lines in ``path`` and, with ``show``, one line each on stderr.

    :param path: the log file (appended to).
    :param show: also print each log on stderr (the CLI's progress stream).
    """

    def __init__(self, path: Path, show: bool = True) -> None:
        self.path = path
        self.show = show

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        record = {"step": int(state.global_step), **dict(logs or {})}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.show:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in record.items())  # fmt: skip
            print(f"sft: {shown}", file=sys.stderr, flush=True)


def run_sft(config: SftConfig, show: bool = True) -> dict[str, Any]:
    """Fine-tune, save model + tokenizer to ``config.output_dir``, return the losses.

    The data are ``config.data`` (text, loss on every token) or, with ``config.task.id``,
    (prompt, solution) pairs from that task (loss on the solution tokens only; see
    :mod:`marlhf.commands.sft_data`).

    :param show: print the trainer's logs on stderr (they are also kept in ``log.jsonl``).
    :returns: ``{"train_loss", "eval_loss_before", "eval_loss_after", "eval_perplexity",
        "train_blocks", "eval_blocks", "output_dir"}`` (blocks are examples with a task).
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from marlhf.commands.sft_data import EXAMPLES_FILE, Collator, check_task_section, task_data

    if config.block_size < 2:
        raise ValueError(f"block_size={config.block_size} must be >= 2")
    if not 0.0 < config.eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={config.eval_fraction} must be in (0, 1)")
    # fail on the data source before anything is made
    texts = [] if config.task.id else read_texts(config.data, config.text_field)
    if config.task.id:
        check_task_section(config.task)
    out = check_output_dir(config.output_dir, RESULT_FILE)
    with staged_output(out) as work:
        collator = None
        if config.task.id:
            tokenizer, examples = task_data(config, work)
            rows = [e.row() for e in examples]
            collator = Collator(int(tokenizer.pad_token_id))
            write_jsonl(work / EXAMPLES_FILE, [e.to_json() for e in examples])
        else:
            tokenizer, rows = _text_data(config, texts, work)
        model = load_causal_lm(config.model) if has_pretrained(config.model) else None
        model = model if model is not None else _new_model(config, tokenizer)
        order = np.random.default_rng(config.seed).permutation(len(rows))
        n_eval = max(1, round(config.eval_fraction * len(rows)))
        if len(rows) - n_eval < 1:
            raise DataError(f"data: only {len(rows)} blocks; need at least 2 to hold one out")
        eval_set = [rows[i] for i in order[:n_eval]]
        train_set = [rows[i] for i in order[n_eval:]]
        args = TrainingArguments(
            output_dir=str(work / "trainer"),
            max_steps=config.max_steps,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=config.seed,
            data_seed=config.seed,
            save_strategy="no",
            report_to=[],
            logging_steps=max(1, config.max_steps // 10) if config.max_steps > 0 else 50,
            use_cpu=config.device == "cpu",
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=collator,
        )
        # The trainer prints its logs on stdout, which carries the command's result: they go to
        # stderr (unless quiet) and to log.jsonl in the output folder instead.
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogLines(work / LOG_FILE, show))
        with during_run():  # an error from here on is the run's, not the config's (exit 1)
            before = float(trainer.evaluate()["eval_loss"])
            train_out = trainer.train()
            after = float(trainer.evaluate()["eval_loss"])
        shutil.rmtree(work / "trainer", ignore_errors=True)
        model.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
        result: dict[str, Any] = {
            "train_loss": float(train_out.training_loss),
            "eval_loss_before": before,
            "eval_loss_after": after,
            "eval_perplexity": math.exp(min(after, 50.0)),
            "train_blocks": len(train_set),
            "eval_blocks": len(eval_set),
            "output_dir": str(out),
        }
        atomic_write_json(work / RESULT_FILE, {"config": to_dict(config), "result": result})
    return result
