"""The algorithm config is the single source: signature, docs, groups, flat names and the CLI
agree."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from marlhf.algorithms import MAPPO, PPO, MAPPOConfig, PPOConfig
from marlhf.algorithms.config import (
    COMMON_ARGUMENTS,
    FLAT_KEYS,
    GROUPS,
    PRESETS,
    CreditConfig,
    KLConfig,
    LossConfig,
    OptimConfig,
    flat_values,
    get_knob,
    knob_fields,
    knob_types,
    leaves,
    literal_choices,
    resolve_config,
)
from marlhf.algorithms.groups import ESTIMATOR_OPTIONS
from marlhf.config.commands import AgentConfig, TrainConfig
from marlhf.config.parse import describe, load_config
from marlhf.credit.estimator_options import GRPOOptions, MCOptions, ReinforcePPBaselineOptions
from marlhf.credit.estimators import available_estimators, get_estimator, register_estimator
from marlhf.credit.kl import KL_ESTIMATORS


@pytest.mark.parametrize(("cls", "config_class"), [(PPO, PPOConfig), (MAPPO, MAPPOConfig)])
def test_signature_dataclass_and_docs_agree(cls: type, config_class: type) -> None:
    # The signature is written out (mypy and IDEs see it): the groups, then the common
    # arguments, then **flat for the knobs by flat name; the docs list groups and knobs.
    params = inspect.signature(cls).parameters
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hyper = [n for n in params if n not in ("policy", "env", "flat", *COMMON_ARGUMENTS)]
    assert hyper == list(fields) == list(GROUPS)  # same names, same order
    for name in fields:
        assert params[name].default is None, name  # None: the group's defaults
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert f":param {name}: {GROUPS[name].__name__}" in (cls.__doc__ or ""), name
    assert params["flat"].kind is inspect.Parameter.VAR_KEYWORD
    defaults = config_class()
    for name, f in knob_fields().items():
        path = FLAT_KEYS[name]
        where = ".".join(path)
        assert f":param {name}: {f.metadata['help']} (``{where}``" in (cls.__doc__ or "")
        if name != "termination":
            assert get_knob(defaults, path) == f.default, name
    for name, default in COMMON_ARGUMENTS.items():
        assert params[name].default == default
    assert ":hyperparameters:" not in (cls.__doc__ or "")
    assert defaults.credit.termination == ("ngram:5" if cls is MAPPO else None)


def test_kl_choices_come_from_one_list() -> None:
    hint = dataclasses.fields(KLConfig)
    annotation = {f.name: f.type for f in hint}["kl_estimator"]
    import typing

    resolved = typing.get_type_hints(KLConfig)["kl_estimator"]
    assert literal_choices(resolved) == KL_ESTIMATORS, annotation
    assert literal_choices(knob_types()["kl_estimator"]) == KL_ESTIMATORS
    assert PPOConfig(kl_estimator="k2").kl.kl_estimator == "k2"  # kl.py's k2 is accepted


def test_flat_names_reach_their_groups_through_one_table() -> None:
    # Every knob is in exactly one group, under one flat name (the table is built from them).
    names = [path[-1] for cls in GROUPS.values() for path, _ in leaves(cls)]
    assert sorted(names) == sorted(FLAT_KEYS) and len(names) == len(set(names))
    for name, path in FLAT_KEYS.items():
        assert path[-1] == name and path[0] in GROUPS
        assert (path[1:], knob_fields()[name]) in leaves(GROUPS[path[0]])
    # Flat, grouped and mixed forms build the same config; a flat value lands on the group
    # given beside it.
    flat = PPOConfig(clip_range=0.1, kl_coef=0.0, learning_rate=3e-4)
    grouped = PPOConfig(
        loss=LossConfig(clip_range=0.1), kl=KLConfig(kl_coef=0.0), optim=OptimConfig(3e-4)
    )
    mixed = PPOConfig(loss=LossConfig(ent_coef=0.01), clip_range=0.1, kl_coef=0.0,
                      learning_rate=3e-4)  # fmt: skip
    assert flat == grouped
    assert mixed.loss == LossConfig(clip_range=0.1, ent_coef=0.01)
    assert flat.flat()["clip_range"] == 0.1 and flat_values(flat) == flat.flat()
    assert PPOConfig(**flat.flat()) == flat  # the flat dict round-trips (checkpoints save it)
    assert flat.replace(clip_range=0.3).loss.clip_range == 0.3
    assert flat.replace(loss=LossConfig(ent_coef=0.1)).loss == LossConfig(ent_coef=0.1)
    assert flat.replace(kl_coef=0.5).loss == flat.loss  # the other groups are kept
    # dataclasses.replace works too (mypy checks its keywords against the groups only)
    assert dataclasses.replace(flat, clip_range=0.3) == flat.replace(clip_range=0.3)  # type: ignore[call-arg]
    # Flat attribute access is gone (mypy finds every flat read); the error names the path.
    name = "clip_range"
    with pytest.raises(AttributeError, match=r"config\.loss\.clip_range"):
        getattr(flat, name)
    with pytest.raises(TypeError, match=r"unknown hyper-parameter 'lr' for PPOConfig; valid:"):
        PPOConfig(lr=1e-3)
    with pytest.raises(ValueError, match=r"loss=.* must be a LossConfig"):
        PPOConfig(loss=KLConfig())  # type: ignore[arg-type]
    # The groups are frozen: a change is a new, validated config.
    with pytest.raises(dataclasses.FrozenInstanceError):
        flat.loss.clip_range = 0.5  # type: ignore[misc]


def test_estimators_own_their_knobs() -> None:
    # An estimator declares the dataclass of the knobs only it reads; the credit group holds one
    # under the estimator's name.
    owned = {n: get_estimator(n).options for n in available_estimators()}
    assert {n: cls for n, cls in owned.items() if cls is not None} == ESTIMATOR_OPTIONS
    assert {
        "grpo": GRPOOptions,
        "reinforce_pp_baseline": ReinforcePPBaselineOptions,
        "mc": MCOptions,
    } == ESTIMATOR_OPTIONS
    for name, cls in ESTIMATOR_OPTIONS.items():
        assert isinstance(getattr(CreditConfig(), name), cls)
    assert FLAT_KEYS["group_std"] == ("credit", "grpo", "group_std")
    assert FLAT_KEYS["mc_rollouts"] == ("credit", "mc", "mc_rollouts")
    assert FLAT_KEYS["reinforce_pp_form"] == (
        "credit", "reinforce_pp_baseline", "reinforce_pp_form"
    )  # fmt: skip
    # Flat names reach them; a flat value keeps the section's other knobs.
    cfg = PPOConfig(group_std=False, mc_rollouts=2, kl_coef=0.0)
    assert cfg.credit.grpo == GRPOOptions(group_std=False)
    assert cfg.credit.mc == MCOptions(mc_rollouts=2, mc_max_starts=8)
    assert cfg.flat()["group_std"] is False and PPOConfig(**cfg.flat()) == cfg
    mine = CreditConfig(mc=MCOptions(mc_max_starts=3))
    assert PPOConfig(credit=mine, mc_rollouts=2).credit.mc == MCOptions(2, 3)
    # Each options class checks its own fields.
    with pytest.raises(ValueError, match=r"mc_rollouts=0 must be an int >= 1"):
        PPOConfig(mc_rollouts=0)
    with pytest.raises(ValueError, match=r"reinforce_pp_form='x' is not one of"):
        ReinforcePPBaselineOptions(reinforce_pp_form="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"credit.grpo=.* must be a GRPOOptions"):
        CreditConfig(grpo=MCOptions())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"options=1 is not a dataclass"):
        register_estimator("bad_options_test", options=1)  # type: ignore[arg-type]


def test_each_group_checks_its_own_fields_and_the_config_the_rules_across() -> None:
    with pytest.raises(ValueError, match=r"clip_range=-1 must be a positive"):
        LossConfig(clip_range=-1)
    with pytest.raises(ValueError, match=r"kl_estimator='k1' cannot regularise in the loss"):
        KLConfig(kl_in="loss")
    with pytest.raises(ValueError, match=r"group_size=1 must be >= 2"):
        CreditConfig(estimator="grpo")
    # mc values come from task rewards alone: a KL in the reward spans the credit and kl groups.
    CreditConfig(estimator="mc")
    with pytest.raises(ValueError, match=r"estimator='mc' estimates values from task rewards"):
        PPOConfig(estimator="mc")
    assert PPOConfig(estimator="mc", kl_coef=0.0).credit.estimator == "mc"


def test_algorithm_takes_groups_and_flat_names_with_presets() -> None:
    from tests.agents.conftest import CueEnv, tiny_model

    env = CueEnv(4, 3)
    algo = PPO(tiny_model(env.codec), env, loss=LossConfig(clip_range=0.1), kl_coef=0.0,
               device="cpu", seed=0)  # fmt: skip
    assert algo.config.loss.clip_range == 0.1 and algo.config.kl.kl_coef == 0.0
    assert algo.hyperparams["clip_range"] == 0.1
    # A group object stands for all of its knobs: a preset fixing one of them to another value
    # clashes, as a flat value would.
    with pytest.raises(ValueError, match=r"preset='grpo' fixes normalize_advantage=False"):
        resolve_config(PPOConfig, "grpo", {"loss": LossConfig(clip_range=0.1)})
    with pytest.raises(ValueError, match=r"clip_range is given twice"):
        resolve_config(PPOConfig, None, {"loss": LossConfig(clip_range=0.1), "clip_range": 0.3})
    cfg = resolve_config(PPOConfig, "grpo", {"clip_range": 0.1, "group_size": 2})
    assert cfg.loss.clip_range == 0.1 and cfg.loss.normalize_advantage is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": float("inf")}, r"learning_rate=inf must be a positive finite"),
        ({"learning_rate": float("nan")}, r"learning_rate=nan must be a positive finite"),
        ({"kl_estimator": "k4"}, r"kl_estimator='k4' is not one of \('k1', 'k2', 'k3'\)"),
        ({"lr_schedule": "cosine"}, r"lr_schedule='cosine' is not one of"),
        ({"warmup_fraction": 1.5}, r"warmup_fraction=1.5 must be a number in \[0.0, 1.0\]"),
        ({"estimator": "nosuch"}, r"estimator='nosuch' is unknown; choose one of \[.*'gae'"),
        ({"group_size": 0}, r"group_size=0 must be an int >= 1"),
        ({"isolate_last": 1}, r"isolate_last=1 must be True or False"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PPOConfig(**kwargs)


def test_unknown_hyperparameter_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown hyper-parameter 'lr' for PPOConfig; valid:"):
        resolve_config(PPOConfig, None, {"lr": 1e-3})


def test_presets_fix_and_suggest() -> None:
    cfg = resolve_config(PPOConfig, ["toy", "ma-rlhf-official"], {"batch_size": 8})
    assert cfg.optim.learning_rate == PRESETS["ma-rlhf-official"].suggested["learning_rate"]
    assert (
        cfg.optim.batch_size == 8
        and cfg.kl.kl_coef == 0.05
        and cfg.sampling.score_temperature == 1.0
    )
    # The value a preset fixes may be repeated, not changed.
    assert resolve_config(PPOConfig, "ma-rlhf-official", {"top_k": 50}).sampling.top_k == 50
    with pytest.raises(ValueError, match=r"preset='ma-rlhf-official' fixes top_k=50"):
        resolve_config(PPOConfig, "ma-rlhf-official", {"top_k": 10})
    with pytest.raises(ValueError, match=r"preset='nope' is unknown; available: \["):
        resolve_config(PPOConfig, "nope", {})


def test_config_replacements_validate_and_update_the_config() -> None:
    from tests.agents.conftest import CueEnv, tiny_model

    env = CueEnv(4, 3)
    algo = PPO(tiny_model(env.codec), env, device="cpu", seed=0)
    algo.config = algo.config.replace(kl_coef=0.3)
    assert algo.config.kl.kl_coef == 0.3 and algo.hyperparams["kl_coef"] == 0.3
    with pytest.raises(ValueError, match="clip_range=-1 must be a positive"):
        algo.config = algo.config.replace(clip_range=-1)
    assert algo.config.loss.clip_range == 0.2


def test_cli_agent_section_is_the_algorithm_config(tmp_path: Any) -> None:
    # Every PPOConfig knob but the termination (a top-level key) is a CLI key with its help,
    # under its group.
    keys = {row[0]: row for row in describe(TrainConfig)}
    for name, f in knob_fields().items():
        if name == "termination":
            assert "agent.termination" not in keys and "agent.credit.termination" not in keys
            continue
        assert keys["agent." + ".".join(FLAT_KEYS[name])][3] == f.metadata["help"]
    # The CLI starts from the `toy` preset, and --help shows its values as the defaults.
    assert keys["agent.optim.learning_rate"][2] == "0.001"
    assert AgentConfig.cli_default().optim.learning_rate == 1e-3
    # 1e-4 (no dot) is a float in YAML and on the command line.
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  learning_rate: 1e-4\n", encoding="utf-8")
    assert load_config(TrainConfig, path).agent.optim.learning_rate == 1e-4
    assert load_config(TrainConfig, None, ["agent.ent_coef=1e-2"]).agent.loss.ent_coef == 1e-2
    # A new task id does not inherit DelayedChoice's kwargs.
    cfg = load_config(TrainConfig, None, ["task.id=marlhf/Reverse-v0"])
    assert cfg.task.kwargs == {}
    cfg = load_config(TrainConfig, None, ["task.id=marlhf/Reverse-v0", "task.kwargs.horizon=5"])
    assert cfg.task.kwargs == {"horizon": 5}
