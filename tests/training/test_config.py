"""Config machinery: YAML + --set overrides, typed errors, help text, example configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from marlhf.config.commands import CompareConfig, EvalConfig, RmConfig, SftConfig, TrainConfig
from marlhf.config.parse import (
    ConfigError,
    describe,
    help_text,
    load_config,
    parse_override,
    to_dict,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"
COMMAND_CONFIGS = {
    "train": TrainConfig,
    "compare": CompareConfig,
    "eval": EvalConfig,
    "sft": SftConfig,
    "rm": RmConfig,
}


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seeds: [3, 4]\nagent:\n  kl_coef: 0.2\ntask:\n  kwargs: {horizon: 16}\n")
    config = load_config(CompareConfig, path, ["agent.kl_coef=0.1", "task.kwargs.num_choices=3"])
    assert config.seeds == [3, 4]
    assert config.agent.kl.kl_coef == 0.1  # the override wins over the file
    assert config.task.kwargs == {"horizon": 16, "num_choices": 3}
    assert config.agent.optim.learning_rate == CompareConfig().agent.optim.learning_rate


def test_agent_knobs_by_group_path_or_flat_name(tmp_path: Path) -> None:
    # The new forms: a group path on the command line, a nested mapping in YAML.
    config = load_config(TrainConfig, overrides=["agent.loss.clip_range=0.1"])
    assert config.agent.loss.clip_range == 0.1 and config.agent.explicit == ["clip_range"]
    path = tmp_path / "nested.yaml"
    path.write_text("agent:\n  loss: {clip_range: 0.3, ent_coef: 0.01}\n  kl: {kl_coef: 0.2}\n")
    nested = load_config(TrainConfig, path)
    assert (nested.agent.loss.clip_range, nested.agent.loss.ent_coef) == (0.3, 0.01)
    assert nested.agent.kl.kl_coef == 0.2
    # The old forms build the same config: flat --set, flat YAML.
    flat = tmp_path / "flat.yaml"
    flat.write_text("agent:\n  clip_range: 0.3\n  ent_coef: 0.01\n  kl_coef: 0.2\n")
    assert load_config(TrainConfig, flat).agent == nested.agent
    old = ["agent.clip_range=0.3", "agent.ent_coef=0.01", "agent.kl_coef=0.2"]
    assert load_config(TrainConfig, overrides=old).agent == nested.agent
    # A later --set wins over the file in either spelling.
    assert load_config(TrainConfig, path, ["agent.clip_range=0.15"]).agent.loss.clip_range == 0.15
    assert load_config(TrainConfig, flat, ["agent.loss.clip_range=0.15"]).agent.loss.clip_range == (
        0.15
    )
    # An estimator's own knobs: under credit.<estimator>, or by flat name.
    own = load_config(TrainConfig, overrides=["agent.credit.grpo.group_std=false"]).agent
    assert own.credit.grpo.group_std is False and own.explicit == ["group_std"]
    assert load_config(TrainConfig, overrides=["agent.group_std=false"]).agent == own
    mc = tmp_path / "mc.yaml"
    mc.write_text("agent:\n  credit: {mc: {mc_rollouts: 2}}\n")
    assert load_config(TrainConfig, mc).agent.credit.mc.mc_rollouts == 2
    with pytest.raises(ConfigError, match=r"unknown config key 'agent.credit.mc.nope'"):
        load_config(TrainConfig, overrides=["agent.credit.mc.nope=1"])
    with pytest.raises(ConfigError, match=r"valid keys here: agent.credit.discount, ") as err:
        load_config(TrainConfig, overrides=["agent.credit.nope=1"])
    assert "agent.credit.grpo," in str(err.value) and "termination" not in str(err.value)
    # A recorded config (a run folder's config.yaml: nested, the termination null) reads back.
    record = tmp_path / "record.yaml"
    record.write_text(yaml.safe_dump(to_dict(load_config(CompareConfig, path))))
    assert load_config(CompareConfig, record) == load_config(CompareConfig, path)
    # One knob set twice with two values in one file is an error naming both keys.
    both = tmp_path / "both.yaml"
    both.write_text("agent:\n  clip_range: 0.3\n  loss: {clip_range: 0.1}\n")
    with pytest.raises(ConfigError, match=r"agent.loss.clip_range=0.1 and agent.clip_range=0.3"):
        load_config(TrainConfig, both)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("agent.loss.kl_coef=0.1", r"unknown config key 'agent.loss.kl_coef'; valid keys here: "
         r"agent.loss.clip_range, .*agent.loss.vf_coef$"),
        ("agent.loss.clip_range=abc", r"'agent.loss.clip_range'.*'abc'.*expected float$"),
        ("agent.loss=0.1", r"'agent.loss': expected a mapping of its knobs"),
        ("agent.credit.termination=ngram:2", r"set the termination with the top-level"),
        ("agent.termination=ngram:2", r"set the termination with the top-level"),
        ("agent.nope=1", r"valid keys here: .*agent.kl.kl_coef.*; or a knob by its flat name: "
         r".*agent.kl_coef"),
    ],
)  # fmt: skip
def test_grouped_agent_keys_errors_name_the_key(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(TrainConfig, overrides=[override])


def test_help_shows_the_agent_section_by_group() -> None:
    text = help_text(TrainConfig)
    lines = text.splitlines()
    assert "      [agent.credit.grpo] " in text  # an estimator's own knobs: a heading too
    for group in ("optim", "loss", "kl", "sampling", "credit", "systems"):
        heading = next(
            i for i, line in enumerate(lines) if line.startswith(f"    [agent.{group}] ")
        )
        # Under the heading: the group's keys, indented below it, each with its help line.
        assert lines[heading + 1].startswith(f"      agent.{group}.")
    assert "  [agent] " in text and "flat name" in text
    loss = text.index("    [agent.loss] ")
    assert text.index("agent.loss.clip_range (float, default 0.2)") > loss
    assert "agent.clip_range (" not in text  # the reference shows the group paths


def test_a_run_folder_recorded_with_flat_agent_keys_is_the_same_settings(tmp_path: Path) -> None:
    from marlhf.algorithms.config import flat_values
    from marlhf.config.parse import to_dict
    from marlhf.runs.runner import record_config

    loaded = load_config(TrainConfig, overrides=["agent.kl_coef=0.2"])
    config = to_dict(loaded)
    # The record a folder got before the groups: the agent's knobs flat, beside its presets.
    agent = loaded.agent
    flat = {**flat_values(agent), "preset": agent.preset, "explicit": agent.explicit}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "agent": flat}))
    (tmp_path / "final.zip").write_text("")  # the folder holds a trained run
    record_config(tmp_path, config, ("agent",))  # the same knobs: accepted
    changed = to_dict(load_config(TrainConfig, overrides=["agent.kl_coef=0.3"]))
    with pytest.raises(ValueError, match=r"holds runs made with a different 'agent'"):
        record_config(tmp_path, changed, ("agent",))


def test_int_widens_to_float_but_bool_is_not_int() -> None:
    assert (
        load_config(TrainConfig, overrides=["agent.learning_rate=1"]).agent.optim.learning_rate
        == 1.0
    )
    with pytest.raises(ConfigError, match=r"total_timesteps.*expected int"):
        load_config(TrainConfig, overrides=["total_timesteps=true"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("agent.klcoef=0.1", r"unknown config key 'agent.klcoef'.*agent\.kl_coef"),
        ("bogus=1", r"unknown config key 'bogus'.*total_timesteps"),
        ("agent.kl_coef=abc", r"'agent.kl_coef'.*'abc'.*expected float$"),
        ("seeds=[0, x]", r"'seeds\[1\]'.*expected int"),
        ("seeds=3", r"'seeds'.*expected list\[int\]"),
        ("task.id.x=1", r"task.id.*no sub-key"),
        ("noequals", r"KEY=VALUE"),
    ],
)
def test_override_errors_name_key_and_type(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(CompareConfig, overrides=[override])


def test_literal_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"'algo'.*one of 'ppo', 'mappo'"):
        load_config(TrainConfig, overrides=["algo=a2c"])


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("agent: 3\n")
    with pytest.raises(ConfigError, match="'agent': expected a mapping"):
        load_config(TrainConfig, wrong)


def test_parse_override_values() -> None:
    assert parse_override("a.b=0.1") == ("a.b", 0.1)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=ngram:5") == ("a", "ngram:5")


@pytest.mark.parametrize("cls", list(COMMAND_CONFIGS.values()))
def test_every_field_has_help(cls: type) -> None:
    rows = describe(cls)
    assert rows
    for key, _, _, text in rows:
        assert text.strip(), f"{cls.__name__}.{key} has no help text"
    assert all(key in help_text(cls) for key, *_ in rows)


def test_example_configs_load() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        first = path.read_text().splitlines()[0]
        # every example starts with "# marlhf <command> --config examples/configs/<file>"
        command = first.split()[2]
        config: object = load_config(COMMAND_CONFIGS[command], path)
        assert config is not None


def test_default_compare_is_the_documented_delayed_choice_config() -> None:
    # `make demo` runs `marlhf compare` with the defaults; the example file documents them
    assert load_config(CompareConfig, EXAMPLES / "delayed_choice.yaml") == CompareConfig()


def test_a_partial_section_keeps_its_fields_own_default() -> None:
    """``marlhf audit``'s task defaults to CreditSum: one dotted key changes only that key (it
    used to rebuild the section from ``TaskConfig()``, silently auditing DelayedChoice)."""
    from marlhf.commands.credit_audit import AuditConfig

    default = load_config(AuditConfig)
    partial = load_config(AuditConfig, overrides=["task.num_envs=8"])
    assert default.task.id == partial.task.id == "marlhf/CreditSum-v0"
    assert (partial.task.num_envs, partial.task.kwargs) == (8, default.task.kwargs)
    other = load_config(AuditConfig, overrides=["task.id=marlhf/Reverse-v0"])
    assert (other.task.id, other.task.num_envs) == ("marlhf/Reverse-v0", default.task.num_envs)
