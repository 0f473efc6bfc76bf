"""``register_preset``: a user's preset beside the built-in ones, usable by name in a config,
by ``PPO(...)`` and by the command line in the same process."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from marlhf.algorithms import PRESETS, Preset, register_preset
from marlhf.algorithms.config import PPOConfig, resolve_config
from marlhf.cli.main import main
from marlhf.config.commands import TrainConfig
from marlhf.config.parse import ConfigError, load_config
from tests.training.conftest import TINY, sets

MINE = Preset(
    fixed={"estimator": "rloo", "normalize_advantage": False},
    suggested={"group_size": 4, "clip_range": 0.125},
    source="a test's own method",
)


@pytest.fixture
def mine() -> Iterator[Preset]:
    """``my-rloo`` registered for the test, forgotten after it."""
    yield register_preset("my-rloo", MINE)
    PRESETS.pop("my-rloo", None)


def test_a_registered_preset_resolves_by_name(mine: Preset) -> None:
    config = resolve_config(PPOConfig, ["toy", "my-rloo"], {"n_epochs": 2})
    assert (config.credit.estimator, config.loss.clip_range, config.optim.learning_rate) == (
        "rloo",
        0.125,
        1e-3,
    )
    with pytest.raises(ValueError, match="fixes estimator='rloo'"):  # fixed knobs stay fixed
        resolve_config(PPOConfig, "my-rloo", {"estimator": "gae"})
    assert register_preset("my-rloo", MINE) is MINE  # the same object again: a no-op


def test_a_registered_preset_in_a_config_and_in_help(
    mine: Preset, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(TrainConfig, overrides=["agent.preset=[toy, my-rloo]"])
    assert (config.agent.credit.estimator, config.agent.loss.clip_range) == ("rloo", 0.125)
    with pytest.raises(ConfigError, match="my-rloo"):
        load_config(TrainConfig, overrides=["agent.preset=[my-rloo]", "agent.estimator=gae"])
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "my-rloo" in capsys.readouterr().out  # the presets the help lists


def test_compare_trains_a_registered_preset(
    mine: Preset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    argv = [*TINY, "seeds=[0]", "include_ppo=false", "terminations=[]", "agents=[my-rloo]"]
    assert (
        main(["compare", *sets(*argv, "total_timesteps=64", "workers=1", f"output_dir={out}")]) == 0
    )
    assert json.loads(capsys.readouterr().out)["trained"] == ["my-rloo-token-seed0"]
    with zipfile.ZipFile(out / "runs" / "my-rloo-token-seed0" / "final.zip") as archive:
        data = json.loads(archive.read("data.json"))
    assert data["preset"] == ["toy", "my-rloo"]
    assert (data["hyperparams"]["estimator"], data["hyperparams"]["clip_range"]) == ("rloo", 0.125)


@pytest.mark.parametrize(
    ("name", "preset", "message"),
    [
        ("grpo", MINE, "'grpo' is already a preset; registered: "),
        ("mappo", MINE, "'mappo' is reserved"),
        ("my rloo", MINE, "without spaces or '@'"),
        ("mine@ngram:5", MINE, "without spaces or '@'"),
        ("x", {"fixed": {}}, "expected a Preset"),
        ("x", Preset(fixed={"clip": 0.1}), "fixed key 'clip' is not a config field; valid: "),
        ("x", Preset(fixed={}, suggested={"lr": 1.0}), "suggested key 'lr' is not a config"),
        (
            "x",
            Preset(fixed={"kl_coef": 0.0}, suggested={"kl_coef": 0.1}),
            "'kl_coef' is both fixed",
        ),
    ],
)
def test_bad_registrations_name_the_problem(name: str, preset: object, message: str) -> None:
    before = dict(PRESETS)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        register_preset(name, preset)  # type: ignore[arg-type]
    assert before == PRESETS
