"""benchmarks/speed_doc.py: the decode and GRPO rows of docs/benchmarks.md (ranges, loads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import speed_doc


def _summary(median: float, low: float, high: float) -> dict[str, float]:
    return {"median": median, "min": low, "max": high}


def test_the_grpo_row_shows_each_ratio_with_its_range_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speed_doc, "RESULTS_DIR", tmp_path)
    assert "No ratio: trl_grpo.json is missing" in "\n".join(speed_doc.grpo_section({}))
    setting = {
        "batch": 32, "group": 4, "response_length": 32, "beta": 0.04,
        "trl_s_per_iter": 11.2, "marlhf_s_per_iter": 6.0, "ratio": 0.51,
        "ratios": {"marlhf": _summary(0.51, 0.46, 0.57), "marlhf_scored": _summary(0.62, 0.5, 0.7)},
        "loadavg": [19.1, 18.0, 16.1],
    }  # fmt: skip
    data = {"trl_version": "1.12.0", "rounds": 6, "warmup": 1, "settings": [setting]}
    (tmp_path / "trl_grpo.json").write_text(json.dumps(data))
    text = "\n".join(speed_doc.grpo_section({}))
    assert (
        "| 32 | 4 | 32 | 0.040 | 11.200 | 6.000 | 0.510 (0.46-0.57) | 0.620 (0.50-0.70) |" in text
    )
    assert "19.1 / 18.0 / 16.1" in text


def test_an_old_result_without_per_round_ratios_shows_its_single_ratio() -> None:
    assert speed_doc.ratio_range({"ratio_shared": 0.6}, "marlhf_shared") == "0.600"
    assert speed_doc.load_text(None) == "n/a"


def test_the_decode_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed_doc, "RESULTS_DIR", tmp_path)
    missing = "Not measured: decode_quick.json and decode.json missing"
    assert missing in "\n".join(speed_doc.decode_section("quick"))
    row = {
        "model": "tiny", "batch": 16, "new_tokens": 64, "tok_s": {"eager": 250.4},
        "speedup_over_eager": {"static": _summary(0.9, 0.85, 0.95),
                               "compiled": _summary(1.3, 1.2, 1.5)},
        "agent_over_bare": {"eager": _summary(0.88, 0.8, 0.9),
                            "compiled": _summary(1.1, 1.0, 1.2)},
        "compile_s": 45.2, "load_before": [11.0, 1, 1], "load_after": [12.5, 1, 1],
    }  # fmt: skip
    (tmp_path / "decode.json").write_text(json.dumps({"results": [row]}))
    text = "\n".join(speed_doc.decode_section())
    want = "| tiny | 16 | 64 | 250 | 0.900 (0.85-0.95) | 1.300 (1.20-1.50) | 0.880 (0.80-0.90) |"
    assert want in text and "| 45 | 11.0-12.5 |" in text
    # make bench's quick run first, the kept full run below it
    quick = {"results": [{**row, "model": "quick tiny"}], "machine": {"commit": "abcdef12"}}
    (tmp_path / "decode_quick.json").write_text(json.dumps(quick))
    text = "\n".join(speed_doc.decode_section("quick"))
    assert text.index("| quick tiny |") < text.index("| tiny |")
    assert "`decode_quick.json`, measured at commit `abcdef1`" in text


def _ops_entry(agent: float, ratio: float, load: float) -> dict[str, object]:
    return {
        "model": "tiny GPT-2 2 x 128", "batch": 16, "new_tokens": 64,
        "ops_per_step": {"bare": 101.5625, "agent": agent}, "agent_over_bare": ratio,
        "load_before": [load, 2.0, 3.0], "load_after": [load + 1, 2.0, 3.0],
    }  # fmt: skip


def test_the_rollout_rows_show_their_load_and_the_op_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speed_doc, "RESULTS_DIR", tmp_path)
    rows = [{"load_before": [4.2, 1, 1], "load_after": [2.5, 1, 1]}, {}]
    assert speed_doc.rollout_lines(rows, "`abc1234`, today") == [
        "Measured at commit `abc1234`, today; load 2.5-4.2.",
        "",
    ]  # no rollout_ops.json: no operation counts
    assert speed_doc.rollout_lines([{}], "x")[0] == "Measured at commit x."  # no load recorded
    data = {
        "before": _ops_entry(124.109375, 0.87, 1.5),
        "after": {
            **_ops_entry(106.4375, 0.93, 2.0),
            "pair_ratios": {"median": 0.95, "q1": 0.9, "q3": 0.99, "pairs": 40},
        },
        "note": "before: main; after: this branch.",
    }
    (tmp_path / "rollout_ops.json").write_text(json.dumps(data))
    text = "\n".join(speed_doc.rollout_lines([], "x"))
    assert "tiny GPT-2 2 x 128, batch 16, 64 new tokens" in text
    assert "| before | 124.1 | 101.6 | 0.870 | n/a | 1.5-2.5 |" in text
    assert "| after | 106.4 | 101.6 | 0.930 | 0.950 (0.90-0.99), 40 pairs | 2.0-3.0 |" in text
    assert text.rstrip().endswith("before: main; after: this branch.")
