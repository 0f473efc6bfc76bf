"""The ``marlhf`` command line: ``train``, ``compare``, ``eval``, ``sft``, ``rm``, ``audit``.

Every command reads its config dataclass (``marlhf.config.commands``): defaults, then
``--config FILE.yaml``, then ``--set KEY=VALUE`` (repeatable, dotted keys). ``--help`` lists
every key with its type, default and help text; ``--print-config`` shows the merged config as
YAML and exits. Bad input (a configuration error) ends with a one-line error on stderr and
exit status 2; an error raised while a run is under way shows its traceback and exits with 1
(:mod:`marlhf.runs.errors`). ``--help`` builds only the help of the command asked for.

``--import MODULE`` (repeatable; or the ``imports`` config key) imports a module that registers
your own tasks or terminations before anything is built, so ``task.id`` and termination specs
can name them (``compare``'s worker processes import it too). The result of a command is one
JSON object on stdout; progress bars, sample completions and tables go to stderr (``--quiet``
turns them off, ``--verbose`` adds a line per iteration and library warnings).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# Besides the standard library, only what the package root loads anyway: `marlhf --help` builds
# no config and imports no training machinery; a command's help builds its own config's (see
# build_parser), a command its own modules.
from marlhf import __version__
from marlhf.envs.core.registration import import_modules

#: Bad input: a configuration error (:mod:`marlhf.runs.errors`).
EXIT_BAD_INPUT = 2
#: A run that could not finish (an error inside it, a save that failed, a run of compare that
#: raised).
EXIT_FAILED = 1
#: Verbosity levels: ``--quiet``, the default, ``--verbose``.
QUIET, NORMAL, VERBOSE = 0, 1, 2
#: Sample completions ``marlhf eval`` shows.
SHOWN_SAMPLES = 3


def progress_mode(verbosity: int) -> str:
    """``--quiet``: none; otherwise a bar on a terminal, plain lines elsewhere (stderr)."""
    return "off" if verbosity == QUIET else "auto"


def _train(config: Any, verbosity: int) -> dict[str, Any]:
    from marlhf.commands.train import run_train
    from marlhf.runs.progress import progress_display

    mode = progress_mode(verbosity)
    with progress_display(
        "train", ["train"], config.total_timesteps, mode, verbosity >= VERBOSE
    ) as up:
        return run_train(config, progress=lambda tokens, total, score: up("train", tokens, score))


def _compare(config: Any, verbosity: int) -> dict[str, Any]:
    from marlhf.commands.compare import run_compare

    return run_compare(config, progress=progress_mode(verbosity), verbose=verbosity >= VERBOSE)


def _eval(config: Any, verbosity: int) -> dict[str, Any]:
    from marlhf.commands.evaluate import run_eval

    summary = run_eval(config)
    if verbosity >= NORMAL:
        _show_samples(summary)
    return summary


def _show_samples(summary: dict[str, Any]) -> None:
    """Print the first sampled completions of an eval on stderr."""
    for i, rec in enumerate(summary.get("examples", [])[:SHOWN_SAMPLES]):
        print(
            f"--- sample {i} (score {rec['score']:.3f})\nprompt:   {rec['prompt']!r}\n"
            f"response: {rec['response']!r}",
            file=sys.stderr,
        )


def _sft(config: Any, verbosity: int) -> dict[str, Any]:
    from marlhf.commands.sft import run_sft

    return run_sft(config, show=verbosity >= NORMAL)


def _audit(config: Any, verbosity: int) -> dict[str, Any]:
    from marlhf.commands.credit_audit import run_audit

    return run_audit(config)


def _rm(config: Any, verbosity: int) -> dict[str, Any]:
    from marlhf.commands.reward_modeling import run_rm

    return run_rm(config)


@dataclass(frozen=True)
class Command:
    """One sub-command: its config dataclass (imported when needed), what runs it, its summary.

    :param config: ``"module:Class"`` of the config dataclass.
    :param run: called as ``run(config, verbosity)``; returns the result printed as JSON.
    :param summary: the one-line help.
    """

    config: str
    run: Callable[[Any, int], dict[str, Any]]
    summary: str

    def config_class(self) -> type:
        """The config dataclass (imports its module)."""
        module, _, name = self.config.partition(":")
        cls: type = getattr(importlib.import_module(module), name)
        return cls


COMMANDS: dict[str, Command] = {
    "train": Command(
        "marlhf.config.commands:TrainConfig", _train, "train one agent (PPO or MAPPO) on one task"
    ),
    "compare": Command(
        "marlhf.config.commands:CompareConfig",
        _compare,
        "the main job: token-level PPO vs MAPPO terminations over seeds; writes a run folder "
        "with metrics, learning curves and report.md",
    ),
    "eval": Command(
        "marlhf.config.commands:EvalConfig",
        _eval,
        "score a saved model on a task's held-out prompts (JSONL samples)",
    ),
    "sft": Command(
        "marlhf.config.commands:SftConfig",
        _sft,
        "causal-LM fine-tuning on text files or JSON lines (warm start)",
    ),
    "rm": Command(
        "marlhf.config.commands:RmConfig",
        _rm,
        "Bradley-Terry reward model from chosen/rejected JSON lines",
    ),
    "audit": Command(
        "marlhf.commands.credit_audit:AuditConfig",
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
    """Registered tasks and terminations, for the help of train and compare (imported here:
    only the help of these two commands needs them)."""
    try:
        from marlhf.algorithms.presets import PRESETS
        from marlhf.options import available_terminations
        from marlhf.runs.builders import registered_env_ids

        return (
            "\n\nregistered tasks: "
            + ", ".join(registered_env_ids())
            + "\nregistered terminations: "
            + ", ".join(available_terminations())
            + "\npresets (each beside its source's settings: docs/presets.md, or "
            + "`python -m marlhf.algorithms.preset_table`): "
            + ", ".join(PRESETS)
        )
    except Exception as err:  # help must print even when an optional part is broken
        return f"\n\n(could not list tasks and terminations: {err})"


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser whose epilog (every config key, the tasks and presets) is built by
    :attr:`make_epilog` only when its help is printed: other commands' configs are never built."""

    make_epilog: Callable[[], str] | None = None
    _epilog: str | None = None

    @property
    def epilog(self) -> str | None:
        if self.make_epilog is not None:
            self._epilog, self.make_epilog = self.make_epilog(), None
        return self._epilog

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        self._epilog = value


def _epilog(name: str) -> str:
    """The help after a command's options: an example, every config key, for train and compare
    the registered tasks, terminations and presets."""
    from marlhf.config.parse import help_text

    text = f"example:\n  {EXAMPLES[name]}\n\n" + help_text(COMMANDS[name].config_class())
    if name in ("train", "compare"):
        text += _catalogue()
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one sub-command per entry of :data:`COMMANDS` (each command's
    epilog is built when its help is printed)."""
    parser = argparse.ArgumentParser(
        prog="marlhf",
        description="marlhf: RLHF with macro actions (MA-RLHF). Run `marlhf COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"marlhf {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.summary,
            description=command.summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.make_epilog = functools.partial(_epilog, name)
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
        _add_import_option(p)
        talk = p.add_mutually_exclusive_group()
        talk.add_argument(
            "--verbose",
            "-v",
            dest="verbosity",
            action="store_const",
            const=VERBOSE,
            default=NORMAL,
            help="also print a line per iteration and library warnings",
        )
        talk.add_argument(
            "--quiet",
            "-q",
            dest="verbosity",
            action="store_const",
            const=QUIET,
            help="print only the result (JSON) and errors: no progress, samples or tables",
        )
    return parser


def _add_import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (dotted name or .py path) that registers your own tasks or "
        "terminations first (repeatable; same as the `imports` config key)",
    )


def _pre_import(argv: list[str]) -> None:
    """Import the ``--import`` modules before the parser is built, so that ``--help`` lists
    the tasks and terminations they register."""
    pre = argparse.ArgumentParser(add_help=False)
    _add_import_option(pre)
    known, _ = pre.parse_known_args(argv)
    import_modules(known.imports)


@contextlib.contextmanager
def _talk(verbosity: int, command: str) -> Iterator[None]:
    """Quiet: stdout of the command (tables, bars) and warnings silenced; verbose: library
    warnings shown; normal: library logging at error level only. marlhf's own notes (an
    unused action mask) are one line on stderr."""
    with warnings.catch_warnings():
        if verbosity == QUIET:
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
            return
        show = warnings.showwarning

        from marlhf.runs.builders import ActionMaskWarning

        def one_line(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, ActionMaskWarning):
                print(f"marlhf {command}: warning: {message}", file=sys.stderr)
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = one_line
        yield


def _quiet_libraries() -> None:
    # transformers draws a progress bar per weight file it loads or writes: noise in our output
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 a run failed, 2 bad input)."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        _pre_import(argv)
    except (ValueError, ImportError) as err:
        print(f"marlhf: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    if args.verbosity < VERBOSE:
        _quiet_libraries()
    from marlhf.config.parse import load_config, to_dict
    from marlhf.parallel import distributed as dist_utils
    from marlhf.runs.errors import is_config_error
    from marlhf.runs.run_files import RunsFailed, SaveError
    from marlhf.threads import apply_thread_policy

    try:
        apply_thread_policy()  # one torch thread unless asked otherwise (docs/threads.md)
        config: Any = load_config(command.config_class(), args.config, args.overrides)
        if hasattr(config, "imports"):  # recorded with the run; compare's workers import them
            config.imports = [
                *config.imports,
                *(m for m in args.imports if m not in config.imports),
            ]
            import_modules(config.imports)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        with _talk(args.verbosity, args.command):
            result = command.run(config, args.verbosity)
    except (SaveError, RunsFailed) as err:  # a full disk, a failed run: what is kept, what next
        print(f"marlhf {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:
        if is_config_error(err):  # bad input: one line naming the key, no traceback
            print(f"marlhf {args.command}: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()  # not the user's input: where it happened matters
        print(
            f"marlhf {args.command}: error: {type(err).__name__}: {err} (raised inside the "
            "run, not a configuration error: the traceback above shows where)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        world = dist_utils.world()  # under torchrun, rank 0 speaks for the run
        dist_utils.destroy()
    if world.is_main:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
