"""The presets table (docs/presets.md): generated from the preset definitions, current, and every
difference from a source explained (issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from marlhf.algorithms.config import FLAT_KEYS, PRESETS, PPOConfig, resolve_config
from marlhf.algorithms.preset_table import differences, marlhf_value, presets_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "presets.md"


def test_docs_page_is_current() -> None:
    assert DOC.read_text() == presets_markdown(), (
        "docs/presets.md is stale: run `python -m marlhf.algorithms.preset_table > docs/presets.md`"
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_difference_is_listed_and_explained(name: str) -> None:
    preset = PRESETS[name]
    fields = set(FLAT_KEYS)  # every knob's flat name
    assert set(preset.source_settings) <= fields  # marlhf's names, so they can be compared
    resolve_config(PPOConfig, name)  # the preset alone builds a valid config
    section = presets_markdown().split(f"## `{name}`")[1].split("\n## ")[0]
    for knob, (want, have) in differences(preset).items():
        assert f"| `{knob}` | `{want!r}` | `{have!r}` |" in section
        assert "**differs**" in section
        assert any(knob in line for line in preset.not_reproduced), (
            f"preset {name!r}: {knob} differs from the source ({want!r} vs {have!r}) but no "
            "not_reproduced line says why"
        )
    for knob, value in preset.source_settings.items():
        if knob not in differences(preset):
            assert marlhf_value(preset, knob)[0] == value


def test_the_rloo_note_is_true() -> None:
    # The KL is summed into the sequence reward (tests/agents/test_fidelity.py::test_rloo).
    assert not any("not summed" in line for line in PRESETS["rloo"].not_reproduced)


def test_the_cli_help_names_the_table() -> None:
    from marlhf.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices: Any = sub.choices
    text = choices["train"].format_help()
    assert "docs/presets.md" in text and "spo-chain" in text
