"""Config machinery: YAML + --set overrides, typed errors, help text, example configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from marlhf.config.commands import CompareConfig, EvalConfig, RmConfig, SftConfig, TrainConfig
from marlhf.config.parse import ConfigError, describe, help_text, load_config, parse_override

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
    assert config.agent.kl_coef == 0.1  # the override wins over the file
    assert config.task.kwargs == {"horizon": 16, "num_choices": 3}
    assert config.agent.learning_rate == CompareConfig().agent.learning_rate


def test_int_widens_to_float_but_bool_is_not_int() -> None:
    assert load_config(TrainConfig, overrides=["agent.learning_rate=1"]).agent.learning_rate == 1.0
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
