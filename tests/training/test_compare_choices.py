"""What `marlhf compare` trains: named terminations alone are compared with PPO, the demo's
default set is unchanged, a run listed twice trains once; a task's unused action mask is a
one-line note; `audit` speaks in CLI keys."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from marlhf.cli.main import main
from marlhf.commands.compare import run_specs
from marlhf.config.commands import CompareConfig
from marlhf.config.parse import load_config
from marlhf.envs.builtin.toy import DelayedChoiceTask
from marlhf.envs.core.registration import make_task
from marlhf.runs.builders import unused_mask_message
from tests.training.conftest import TINY, sets


def _runs(*overrides: str) -> list[str]:
    names = [s.name for s in run_specs(load_config(CompareConfig, overrides=list(overrides)))]
    return [n.removesuffix("-seed0") for n in names if n.endswith("-seed0")]


def test_the_default_set_is_the_demos() -> None:
    assert _runs() == ["ppo-token", "mappo-ngram_5", "grpo-token", "rloo-token"]


def test_naming_terminations_compares_only_those_with_ppo() -> None:
    assert _runs("terminations=[ngram:3, ngram:10]") == [
        "ppo-token",
        "mappo-ngram_3",
        "mappo-ngram_10",
    ]
    # extra agents only when asked for
    assert _runs("terminations=[ngram:3]", "agents=[grpo]") == [
        "ppo-token",
        "mappo-ngram_3",
        "grpo-token",
    ]
    assert _runs("agents=[dapo]") == ["ppo-token", "mappo-ngram_5", "dapo-token"]


def test_a_run_listed_twice_trains_once() -> None:
    # ppo is the baseline already; mappo@ngram:5 (`mappo` alone) is the default termination's
    assert _runs("agents=[ppo, mappo, grpo]") == ["ppo-token", "mappo-ngram_5", "grpo-token"]
    assert _runs("agents=[ppo]", "include_ppo=false") == ["mappo-ngram_5", "ppo-token"]


def test_unused_action_mask_message() -> None:
    task = make_task("marlhf/DelayedChoice-v0", horizon=4)
    message = unused_mask_message(task, mask_actions=False)
    assert message is not None
    assert "allows 4 of its 9 tokens" in message and "agent.mask_actions=true" in message
    assert "random return 0.250" in message
    assert unused_mask_message(task, mask_actions=True) is None

    class Unmasked(DelayedChoiceTask):
        def action_mask(self) -> np.ndarray:  # every token but pad: no mask of its own
            mask = np.ones(self.codec.vocab_size, dtype=bool)
            mask[self.codec.pad_token_id] = False
            return mask

    assert unused_mask_message(Unmasked(horizon=4), mask_actions=False) is None


def test_the_mask_note_is_one_line_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = sets(*TINY, "total_timesteps=64", f"output_dir={tmp_path / 'a'}")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["train", *argv]) == 0
    err = capsys.readouterr().err
    notes = [x for x in err.splitlines() if x.startswith("marlhf train: warning: ")]
    assert len(notes) == 1 and "agent.mask_actions=true" in notes[0]
    masked = sets(*TINY, "total_timesteps=64", "agent.mask_actions=true")
    assert main(["train", *masked, *sets(f"output_dir={tmp_path / 'b'}")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_audit_help_and_errors_speak_cli_keys(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert "task.id (str, default 'marlhf/CreditSum-v0')" in capsys.readouterr().out
    argv = sets("task.id=marlhf/Reverse-v0", "task.kwargs={}", "output_dir=/nonexistent/a")
    assert main(["audit", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marlhf audit: error: truth=exact cannot audit marlhf/Reverse-v0")
    assert "use truth=mc" in err.lower() and "agent.mask_actions=true" in err
    assert "method=" not in err and "max_sequences" not in err
