"""The configs of the ``marlhf`` commands: ``train``, ``compare``, ``eval``, ``sft``, ``rm``.

Each field's help text is what ``marlhf <command> --help`` prints. ``examples/configs/`` holds a
ready YAML file for every task. The shared ``model``, ``task`` and ``agent`` sections live in
:mod:`marlhf.config.sections` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from marlhf.config.parse import (
    ConfigError,
    check_device,
    check_float,
    check_folder,
    check_int,
    check_seed,
    doc,
)
from marlhf.config.sections import CLI_PRESETS as CLI_PRESETS
from marlhf.config.sections import DEFAULT_TASK as DEFAULT_TASK
from marlhf.config.sections import DEFAULT_TASK_KWARGS as DEFAULT_TASK_KWARGS
from marlhf.config.sections import MAX_NUM_ENVS as MAX_NUM_ENVS
from marlhf.config.sections import MAX_TINY_PARAMS as MAX_TINY_PARAMS
from marlhf.config.sections import AgentConfig, ModelConfig, TaskConfig


# Run options that several commands share (one definition each).
def checkpoint_every_field() -> Any:
    return field(
        default=10,
        metadata=doc("save a resumable checkpoint every this many iterations (0: never)"),
    )


def checkpoint_minutes_field() -> Any:
    return field(
        default=5.0,
        metadata=doc(
            "also save a checkpoint at the end of the first iteration this many minutes after "
            "the last one (0: by checkpoint_every alone): a killed run loses about this much "
            "work, plus the iteration under way"
        ),
    )


def tensorboard_field() -> Any:
    return field(
        default=False,
        metadata=doc(
            "also write TensorBoard event files in the run folder(s) (tensorboard --logdir)"
        ),
    )


def imports_field() -> Any:
    return field(
        default_factory=lambda: [],
        metadata=doc(
            "modules that register your own tasks or terminations, imported before anything "
            "is built (and in every worker process): dotted names or .py paths"
        ),
    )


CreditTruth = Literal["exact", "mc"]


def credit_every_field() -> Any:
    return field(
        default=0,
        metadata=doc(
            "log the credit audit every this many iterations (0: off): the agent's own scheme "
            "and credit_schemes scored against the policy's true advantages on the rollout just "
            "collected, as credit/<scheme>/{rmse,corr,sign,null_abs,segment_corr} in "
            "metrics.csv and TensorBoard (marlhf.audit.credit.CreditAuditCallback)"
        ),
    )


def credit_truth_field() -> Any:
    return field(
        default="exact",
        metadata=doc(
            "the audit's truth: exact (enumerate continuations: CreditSum, DelayedChoice, tiny "
            "settings of other tasks; checked before training) or mc (Monte Carlo, any task, "
            "slow)"
        ),
    )


def credit_mc_samples_field() -> Any:
    return field(
        default=16,
        metadata=doc("credit_truth=mc: continuations per prefix (>= 2; SE shrinks as 1/sqrt)"),
    )


def credit_schemes_field() -> Any:
    return field(
        default_factory=lambda: [],
        metadata=doc(
            "schemes audited beside the agent's own: 'estimator[@termination] [key=value ...]' "
            "(e.g. 'gae@ngram:5', 'gae gae_lambda=1.0'); each needs what the rollouts hold"
        ),
    )


def check_credit(config: Any) -> None:
    """Check the ``credit_*`` fields of a train or compare config (named errors)."""
    check_int("credit_every", config.credit_every, 0, note=" (0: off)")
    if config.credit_truth not in ("exact", "mc"):
        raise ConfigError(f"credit_truth={config.credit_truth!r}; valid: 'exact', 'mc'")
    check_int("credit_mc_samples", config.credit_mc_samples, 2, 1_000_000)
    if not config.credit_schemes:
        return
    from marlhf.audit.credit import Scheme  # the audit machinery, only when schemes are named

    for i, text in enumerate(config.credit_schemes):
        try:
            Scheme.parse(text)
        except ValueError as err:
            raise ConfigError(f"credit_schemes[{i}]: {err}") from None


@dataclass
class TrainConfig:
    """`marlhf train`: one agent on one task."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("the policy model"))
    task: TaskConfig = field(default_factory=TaskConfig, metadata=doc("the environment"))
    agent: AgentConfig = field(
        default_factory=AgentConfig.cli_default, metadata=doc("hyper-parameters")
    )
    algo: Literal["ppo", "mappo"] = field(
        default="mappo", metadata=doc("token-level ppo or macro-action mappo")
    )
    termination: str | None = field(
        default=None,
        metadata=doc(
            "MAPPO termination spec, e.g. ngram:5, ngram:10 (null: ngram:5 for mappo); an error "
            "with algo=ppo, which is token-level"
        ),
    )
    total_timesteps: int = field(
        default=20_000, metadata=doc("training budget in generated tokens")
    )
    seed: int = field(default=0, metadata=doc("seed of the model init, the env and the agent"))
    output_dir: str = field(
        default="runs/train", metadata=doc("folder for the saved agent, logs and metrics")
    )
    device: str = field(default="cpu", metadata=doc("torch device: cpu, cuda or auto"))
    num_threads: int | None = field(
        default=None,
        metadata=doc("torch CPU threads (null: MARLHF_NUM_THREADS, else 1; see docs/threads.md)"),
    )
    checkpoint_every: int = checkpoint_every_field()
    checkpoint_minutes: float = checkpoint_minutes_field()
    tensorboard: bool = tensorboard_field()
    imports: list[str] = imports_field()
    credit_every: int = credit_every_field()
    credit_truth: CreditTruth = credit_truth_field()
    credit_mc_samples: int = credit_mc_samples_field()
    credit_schemes: list[str] = credit_schemes_field()

    def __post_init__(self) -> None:
        check_folder("output_dir", self.output_dir)
        check_int("total_timesteps", self.total_timesteps, 1)
        check_credit(self)
        check_seed("seed", self.seed)
        check_device("device", self.device)
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, 1, 4096, " (null: the thread policy)")
        check_int("checkpoint_every", self.checkpoint_every, 0, note=" (0: never)")
        check_float("checkpoint_minutes", self.checkpoint_minutes, 0.0, 1e6, open_low=False)


#: What ``marlhf compare`` trains beside PPO when neither ``terminations`` nor ``agents`` is set
#: (``make demo``): MAPPO with 5-token macros, GRPO and RLOO.
DEFAULT_TERMINATIONS = ["ngram:5"]
DEFAULT_AGENTS = ["grpo", "rloo"]


@dataclass
class CompareConfig:
    """`marlhf compare`: credit-assignment schemes (token-level PPO, MAPPO terminations, group
    baselines, ...) on one task over several seeds, at the same token budget."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("the policy model"))
    task: TaskConfig = field(default_factory=TaskConfig, metadata=doc("the environment"))
    agent: AgentConfig = field(
        default_factory=AgentConfig.cli_default,
        metadata=doc("hyper-parameters shared by every agent"),
    )
    terminations: list[str] | None = field(
        default=None,
        metadata=doc(
            "MAPPO termination specs to compare with token-level PPO (quote a spec holding "
            "commas: ['random_ngram:sizes=1,2,3', ngram:5]); null: [ngram:5]"
        ),
    )
    include_ppo: bool = field(
        default=True, metadata=doc("also train token-level PPO (the reference of the report)")
    )
    agents: list[str] | None = field(
        default=None,
        metadata=doc(
            "more credit-assignment schemes, each PRESET or PRESET@TERMINATION (grpo, rloo, "
            "dr-grpo, reinforce++, dapo, gspo, ma-ppo@ngram:10, grpo@ngram:5, ...; see "
            "marlhf.algorithms.PRESETS), trained after PPO and the terminations with the shared "
            "agent section and the same seeds and token budget; null: [grpo, rloo] when "
            "terminations is null too, none when you name terminations (then only those are "
            "compared with PPO). A run listed twice (ppo, or mappo@ngram:5 beside the "
            "terminations) trains once"
        ),
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata=doc("seeds; every agent runs once per seed")
    )
    total_timesteps: int = field(
        default=32_768,
        metadata=doc(
            "training budget per run, in generated tokens (continuations and greedy baseline "
            "rollouts included: budgets are compute-matched)"
        ),
    )
    output_dir: str = field(
        default="runs/compare", metadata=doc("run folder; re-running on it resumes")
    )
    device: str = field(default="cpu", metadata=doc("torch device: cpu, cuda or auto"))
    workers: int = field(
        default=2, metadata=doc("runs trained in parallel processes (1: in this process)")
    )
    threads_per_worker: int = field(default=1, metadata=doc("torch CPU threads per run"))
    checkpoint_every: int = checkpoint_every_field()
    checkpoint_minutes: float = checkpoint_minutes_field()
    metric: str = field(
        default="rollout/score_mean", metadata=doc("logged metric the report and curves compare")
    )
    tensorboard: bool = tensorboard_field()
    imports: list[str] = imports_field()
    credit_every: int = credit_every_field()
    credit_truth: CreditTruth = credit_truth_field()
    credit_mc_samples: int = credit_mc_samples_field()
    credit_schemes: list[str] = credit_schemes_field()

    def chosen_terminations(self) -> list[str]:
        """``terminations``, or :data:`DEFAULT_TERMINATIONS` when null."""
        return list(DEFAULT_TERMINATIONS if self.terminations is None else self.terminations)

    def chosen_agents(self) -> list[str]:
        """``agents``; when null, :data:`DEFAULT_AGENTS` unless terminations were named."""
        if self.agents is not None:
            return list(self.agents)
        return list(DEFAULT_AGENTS) if self.terminations is None else []

    def __post_init__(self) -> None:
        check_folder("output_dir", self.output_dir)
        check_int("total_timesteps", self.total_timesteps, 1)
        check_credit(self)
        for i, seed in enumerate(self.seeds):
            check_seed(f"seeds[{i}]", seed)
        check_device("device", self.device)
        check_int("workers", self.workers, 1, 1024)
        check_int("threads_per_worker", self.threads_per_worker, 1, 4096)
        check_int("checkpoint_every", self.checkpoint_every, 0, note=" (0: never)")
        check_float("checkpoint_minutes", self.checkpoint_minutes, 0.0, 1e6, open_low=False)


@dataclass
class EvalTaskConfig(TaskConfig):
    """The task of `marlhf eval`: by default the one the model was trained on."""

    id: str = field(
        default="",
        metadata=doc(
            "env id to score on; empty: the task the model was trained on, read from its run "
            "folder (config.yaml); another id is evaluated only when named here"
        ),
    )
    kwargs: dict[str, Any] = field(
        default_factory=lambda: {},
        metadata=doc(
            "task keyword arguments; with the trained task they update the recorded ones "
            "(e.g. max_new_tokens)"
        ),
    )


@dataclass
class EvalConfig:
    """`marlhf eval`: score a saved model on a task's held-out prompts."""

    model: ModelConfig = field(
        default_factory=ModelConfig, metadata=doc("the model to score (model.path required)")
    )
    task: EvalTaskConfig = field(
        default_factory=lambda: EvalTaskConfig(),
        metadata=doc("the environment (default: the one the model was trained on)"),
    )
    episodes: int = field(default=64, metadata=doc("number of held-out prompts to score"))
    seed: int = field(
        default=12345,
        metadata=doc("seed of the held-out prompt draw (differs from training seeds)"),
    )
    greedy: bool = field(
        default=True, metadata=doc("greedy decoding (false: sample at `temperature`)")
    )
    temperature: float = field(
        default=1.0, metadata=doc("sampling temperature when greedy is false")
    )
    output: str | None = field(
        default=None, metadata=doc("JSONL file for the samples (default: beside the model)")
    )
    device: str = field(default="cpu", metadata=doc("torch device: cpu, cuda or auto"))
    imports: list[str] = imports_field()

    def __post_init__(self) -> None:
        check_int("episodes", self.episodes, 1)
        check_seed("seed", self.seed)
        check_float("temperature", self.temperature, 0.0, 100.0)
        check_device("device", self.device)


@dataclass
class SftTaskConfig:
    """`marlhf sft` on a task's own solutions instead of files."""

    id: str = field(
        default="",
        metadata=doc(
            "env id of a task that can write solutions (e.g. marlhf/ReasoningGym-v0); "
            "empty: train on `data`"
        ),
    )
    kwargs: dict[str, Any] = field(
        default_factory=lambda: {},
        metadata=doc("the task's keyword arguments (use the same ones for `marlhf train`)"),
    )
    examples: int = field(
        default=2000, metadata=doc("(prompt, solution) pairs drawn from the task")
    )

    def __post_init__(self) -> None:
        check_int("examples", self.examples, 2, 10_000_000, " (one is held out at least)")


@dataclass
class SftConfig:
    """`marlhf sft`: causal-LM fine-tuning on text files or JSON lines, or on the solutions a
    task writes for its own prompts (loss on the solution tokens only)."""

    data: list[str] = field(
        default_factory=lambda: [],
        metadata=doc("text files (any extension) or .jsonl files with a text field"),
    )
    task: SftTaskConfig = field(
        default_factory=SftTaskConfig,
        metadata=doc("generate the data from a task instead: task.id, task.kwargs, examples"),
    )
    text_field: str = field(
        default="text", metadata=doc("the field holding the text in .jsonl files")
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata=doc("start model (null path: tiny GPT-2)")
    )
    vocab_size: int = field(
        default=2048, metadata=doc("BPE vocabulary trained on the data when model.path is null")
    )
    block_size: int = field(
        default=128,
        metadata=doc(
            "training sequence length in tokens (with task.id: the longest prompt + solution "
            "allowed; a longer one is an error)"
        ),
    )
    max_steps: int = field(
        default=200, metadata=doc("optimiser steps (-1: run `epochs` full epochs)")
    )
    epochs: float = field(default=1.0, metadata=doc("epochs when max_steps is -1"))
    batch_size: int = field(default=8, metadata=doc("sequences per step"))
    learning_rate: float = field(default=5e-4, metadata=doc("AdamW learning rate"))
    eval_fraction: float = field(
        default=0.05, metadata=doc("fraction of blocks held out for the eval loss")
    )
    seed: int = field(default=0, metadata=doc("seed of the init, the split and the data order"))
    output_dir: str = field(default="runs/sft", metadata=doc("folder for the model and tokenizer"))
    device: str = field(default="cpu", metadata=doc("cpu or cuda"))

    def __post_init__(self) -> None:
        check_folder("output_dir", self.output_dir)
        if self.max_steps != -1:
            check_int("max_steps", self.max_steps, 1, note=", or -1 to run `epochs` full epochs")
        check_float("epochs", self.epochs, 0.0, 1e6)
        check_int("vocab_size", self.vocab_size, 300, 1_000_000, " (256 bytes + merges)")
        check_int("block_size", self.block_size, 2, 1_000_000)
        check_int("batch_size", self.batch_size, 1, 1_000_000)
        check_float("learning_rate", self.learning_rate, 0.0, 1.0)
        check_float("eval_fraction", self.eval_fraction, 0.0, 0.99)
        check_seed("seed", self.seed)
        check_device("device", self.device)
        if self.data and self.task.id:
            raise ConfigError(
                f"data={self.data!r} and task.id={self.task.id!r}: give one source, not both"
            )


@dataclass
class RmConfig:
    """`marlhf rm`: Bradley-Terry reward model from chosen/rejected pairs."""

    data: str = field(default="", metadata=doc("JSON lines of {prompt?, chosen, rejected}"))
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata=doc("start model (null path: tiny GPT-2)")
    )
    vocab_size: int = field(
        default=1024, metadata=doc("BPE vocabulary trained on the data when model.path is null")
    )
    max_length: int = field(
        default=128, metadata=doc("tokens per prompt+answer (longer ones are cut on the left)")
    )
    epochs: int = field(default=3, metadata=doc("passes over the training pairs"))
    batch_size: int = field(default=16, metadata=doc("pairs per step"))
    learning_rate: float = field(default=1e-3, metadata=doc("AdamW learning rate"))
    eval_fraction: float = field(
        default=0.2, metadata=doc("fraction of pairs held out for the accuracy")
    )
    seed: int = field(default=0, metadata=doc("seed of the init, the split and the data order"))
    output_dir: str = field(
        default="runs/rm", metadata=doc("folder for the sequence-classification model")
    )
    device: str = field(default="cpu", metadata=doc("cpu or cuda"))

    def __post_init__(self) -> None:
        check_folder("output_dir", self.output_dir)
        check_int("vocab_size", self.vocab_size, 300, 1_000_000, " (256 bytes + merges)")
        check_int("max_length", self.max_length, 2, 1_000_000)
        check_int("epochs", self.epochs, 1, 1_000_000)
        check_int("batch_size", self.batch_size, 1, 1_000_000)
        check_float("learning_rate", self.learning_rate, 0.0, 1.0)
        check_float("eval_fraction", self.eval_fraction, 0.0, 0.99)
        check_seed("seed", self.seed)
        check_device("device", self.device)
