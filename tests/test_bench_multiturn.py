"""benchmarks/multiturn.py on a tiny setting: the forward and token counts it reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_forced_tokens_cost_no_extra_forward(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.multiturn import main

    B, G, n_obs = 2, 2, 3
    main(["--batch", str(B), "--turn-tokens", str(G), "--obs-tokens", str(n_obs),
          "--repeats", "1", "--out", str(tmp_path / "mt.json")])  # fmt: skip
    data = json.loads((tmp_path / "mt.json").read_text())
    r = data["results"]
    multi = r["multi-turn (forced tokens in one forward)"]
    same = r["one turn, same forwards (4G tokens)"]
    tokens = r["one turn, same tokens (4G+3O tokens)"]
    reprefill = r["multi-turn, re-prefill every turn"]
    assert multi["forwards"] == same["forwards"] == reprefill["forwards"] == 4 * G
    assert tokens["forwards"] == 4 * G + 3 * n_obs
    # Fed to the model: the prompt, each sampled token once, each forced token once.
    assert multi["tokens_fed"] == tokens["tokens_fed"] == B * (1 + 4 * G - 1 + 3 * n_obs)
    assert reprefill["tokens_fed"] > multi["tokens_fed"]  # the history again at every turn
    assert data["loadavg"] and "machine" in data and data["goal"] == 1.15
