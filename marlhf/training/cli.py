"""The ``marlhf`` command line: ``train``, ``compare``, ``eval``, ``sft``, ``rm``, ``audit``.

Every command reads its config dataclass (``marlhf.training.configs``): defaults, then
``--config FILE.yaml``, then ``--set KEY=VALUE`` (repeatable, dotted keys). ``--help`` lists
every key with its type, default and help text; ``--print-config`` shows the merged config as
YAML and exits. Bad input ends with a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from marlhf.agents import distributed as dist_utils
from marlhf.training.audit import AuditConfig
from marlhf.training.config import ConfigError, help_text, load_config, to_dict
from marlhf.training.configs import (
    CompareConfig,
    EvalConfig,
    RmConfig,
    SftConfig,
    TrainConfig,
)

EXIT_BAD_INPUT = 2


def _train(config: Any) -> dict[str, Any]:
    from marlhf.training.train import run_train

    return run_train(config)


def _compare(config: Any) -> dict[str, Any]:
    from marlhf.training.compare import run_compare

    return run_compare(config)


def _eval(config: Any) -> dict[str, Any]:
    from marlhf.training.evaluate import run_eval

    return run_eval(config)


def _sft(config: Any) -> dict[str, Any]:
    from marlhf.training.sft import run_sft

    return run_sft(config)


def _audit(config: Any) -> dict[str, Any]:
    from marlhf.training.audit import run_audit

    return run_audit(config)


def _rm(config: Any) -> dict[str, Any]:
    from marlhf.training.reward_modeling import run_rm

    return run_rm(config)


COMMANDS: dict[str, tuple[type, Callable[[Any], dict[str, Any]], str]] = {
    "train": (TrainConfig, _train, "train one agent (PPO or MAPPO) on one task"),
    "compare": (
        CompareConfig,
        _compare,
        "the main job: token-level PPO vs MAPPO terminations over seeds; writes a run folder "
        "with metrics, learning curves and report.md",
    ),
    "eval": (EvalConfig, _eval, "score a saved model on a task's held-out prompts (JSONL samples)"),
    "sft": (SftConfig, _sft, "causal-LM fine-tuning on text files or JSON lines (warm start)"),
    "rm": (RmConfig, _rm, "Bradley-Terry reward model from chosen/rejected JSON lines"),
    "audit": (
        AuditConfig,
        _audit,
        "each estimator's advantages against the policy's true advantages (exact or Monte "
        "Carlo) on the same rollouts: bias, variance, correlation per position and segment",
    ),
}


EXAMPLES = {
    "train": "marlhf train --config examples/configs/humaneval.yaml --set model.path=runs/sft",
    "compare": "marlhf compare -s 'terminations=[ngram:5, ngram:10]' -s task.kwargs.horizon=64",
    "eval": "marlhf eval --set model.path=runs/train/final --set task.id=marlhf/DelayedChoice-v0",
    "sft": "marlhf sft --set 'data=[corpus.txt, more.jsonl]' --set output_dir=runs/sft",
    "rm": "marlhf rm --set data=pairs.jsonl --set output_dir=runs/rm",
    "audit": "marlhf audit --set train_timesteps=20480 --set 'schemes=[gae, gae@ngram:5]'",
}


def _catalogue() -> str:
    """Registered tasks and terminations, for the help of train and compare."""
    try:
        from marlhf.options import available_terminations
        from marlhf.training.builders import registered_env_ids

        return (
            "\n\nregistered tasks: "
            + ", ".join(registered_env_ids())
            + "\nregistered terminations: "
            + ", ".join(available_terminations())
        )
    except Exception as err:  # help must print even when an optional part is broken
        return f"\n\n(could not list tasks and terminations: {err})"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one sub-command per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="marlhf",
        description="marlhf: RLHF with macro actions (MA-RLHF). Run `marlhf COMMAND --help`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (cls, _, summary) in COMMANDS.items():
        epilog = f"example:\n  {EXAMPLES[name]}\n\n" + help_text(cls)
        if name in ("train", "compare"):
            epilog += _catalogue()
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", "-c", metavar="FILE", help="YAML file with config values")
        p.add_argument(
            "--set",
            "-s",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one config key (repeatable), e.g. --set agent.kl_coef=0.1",
        )
        p.add_argument(
            "--print-config", action="store_true", help="print the merged config as YAML and exit"
        )
    return parser


def _quiet_libraries() -> None:
    # transformers draws a progress bar per weight file it loads or writes: noise in our output
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    _quiet_libraries()
    cls, run, _ = COMMANDS[args.command]
    try:
        config: Any = load_config(cls, args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        result = run(config)
    except (ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"marlhf {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        world = dist_utils.world()  # under torchrun, rank 0 speaks for the run
        dist_utils.destroy()
    if world.is_main:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
