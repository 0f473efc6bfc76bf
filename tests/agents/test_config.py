"""The algorithm config is the single source: signature, docs, attributes and the CLI agree."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from marlhf.algorithms import MAPPO, PPO, MAPPOConfig, PPOConfig
from marlhf.algorithms.config import COMMON_ARGUMENTS, PRESETS, literal_choices, resolve_config
from marlhf.config.commands import AgentConfig, TrainConfig
from marlhf.config.parse import describe, load_config
from marlhf.credit.kl import KL_ESTIMATORS


@pytest.mark.parametrize(("cls", "config_class"), [(PPO, PPOConfig), (MAPPO, MAPPOConfig)])
def test_signature_dataclass_and_docs_agree(cls: type, config_class: type) -> None:
    params = inspect.signature(cls).parameters
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hyper = [n for n in params if n not in ("policy", "env", *COMMON_ARGUMENTS)]
    assert hyper == list(fields)  # same names, same order
    defaults = config_class()
    for name in fields:
        assert params[name].default == getattr(defaults, name), name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert f":param {name}: {fields[name].metadata['help']}" in (cls.__doc__ or ""), name
    for name, default in COMMON_ARGUMENTS.items():
        assert params[name].default == default
    assert ":hyperparameters:" not in (cls.__doc__ or "")
    assert params["termination"].default == ("ngram:5" if cls is MAPPO else None)


def test_kl_choices_come_from_one_list() -> None:
    hint = dataclasses.fields(PPOConfig)
    annotation = {f.name: f.type for f in hint}["kl_estimator"]
    import typing

    resolved = typing.get_type_hints(PPOConfig)["kl_estimator"]
    assert literal_choices(resolved) == KL_ESTIMATORS, annotation
    assert PPOConfig(kl_estimator="k2").kl_estimator == "k2"  # kl.py's k2 is accepted


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
    assert cfg.learning_rate == PRESETS["ma-rlhf-official"].suggested["learning_rate"]
    assert cfg.batch_size == 8 and cfg.kl_coef == 0.05 and cfg.score_temperature == 1.0
    # The value a preset fixes may be repeated, not changed.
    assert resolve_config(PPOConfig, "ma-rlhf-official", {"top_k": 50}).top_k == 50
    with pytest.raises(ValueError, match=r"preset='ma-rlhf-official' fixes top_k=50"):
        resolve_config(PPOConfig, "ma-rlhf-official", {"top_k": 10})
    with pytest.raises(ValueError, match=r"preset='nope' is unknown; available: \["):
        resolve_config(PPOConfig, "nope", {})


def test_attribute_writes_validate_and_update_the_config() -> None:
    from tests.agents.conftest import CueEnv, tiny_model

    env = CueEnv(4, 3)
    # typed Any: the config's fields become properties when the class is built, out of mypy's view
    algo: Any = PPO(tiny_model(env.codec), env, device="cpu", seed=0)
    algo.kl_coef = 0.3
    assert algo.config.kl_coef == 0.3 and algo.hyperparams["kl_coef"] == 0.3
    with pytest.raises(ValueError, match="clip_range=-1 must be a positive"):
        algo.clip_range = -1
    assert algo.clip_range == 0.2


def test_cli_agent_section_is_the_algorithm_config(tmp_path: Any) -> None:
    # Every PPOConfig knob but the termination (a top-level key) is a CLI key with its help.
    keys = {row[0]: row for row in describe(TrainConfig)}
    for f in dataclasses.fields(PPOConfig):
        if f.name == "termination":
            assert "agent.termination" not in keys
            continue
        assert keys[f"agent.{f.name}"][3] == f.metadata["help"]
    # The CLI starts from the `toy` preset, and --help shows its values as the defaults.
    assert keys["agent.learning_rate"][2] == "0.001"
    assert AgentConfig.cli_default().learning_rate == 1e-3
    # 1e-4 (no dot) is a float in YAML and on the command line.
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  learning_rate: 1e-4\n", encoding="utf-8")
    assert load_config(TrainConfig, path).agent.learning_rate == 1e-4
    assert load_config(TrainConfig, None, ["agent.ent_coef=1e-2"]).agent.ent_coef == 1e-2
    # A new task id does not inherit DelayedChoice's kwargs.
    cfg = load_config(TrainConfig, None, ["task.id=marlhf/Reverse-v0"])
    assert cfg.task.kwargs == {}
    cfg = load_config(TrainConfig, None, ["task.id=marlhf/Reverse-v0", "task.kwargs.horizon=5"])
    assert cfg.task.kwargs == {"horizon": 5}
