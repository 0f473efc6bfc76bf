"""The levers of ``benchmarks/update_levers.py``: the tanh GELU is GPT-2's activation in one
kernel, the compiled blocks run only where gradients are on and give the eager values, and the
table the page renders names every side with its ratio."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from update_levers import LEVERS, TRUNKS, compile_blocks, levers_table, use_tanh_gelu

from marlhf.models import tiny_gpt2


def _model(seed: int = 0) -> torch.nn.Module:
    # Dropout off, as the agent's policy has it (gradients still flow in eval mode).
    return tiny_gpt2(50, n_layer=2, n_embd=16, n_head=2, n_positions=32, seed=seed).eval()


def test_tanh_gelu_is_gpt2s_activation_to_float_rounding() -> None:
    plain, swapped = _model(), _model()
    assert use_tanh_gelu(swapped) == 2  # one per block
    assert use_tanh_gelu(swapped) == 0  # nothing left to replace
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    a, b = plain(input_ids=ids).logits, swapped(input_ids=ids).logits
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(plain.named_parameters(), swapped.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_blocks_run_only_with_gradients_and_equal_the_eager_values() -> None:
    plain, compiled = _model(), _model()
    graphs: list[Any] = []

    def counting_backend(gm: Any, example_inputs: Any) -> Any:  # runs the traced graph as is
        graphs.append(gm)
        return gm.forward

    assert compile_blocks(compiled, backend=counting_backend) == 2
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # generation and scoring: the eager forward, nothing compiled
        torch.testing.assert_close(
            compiled(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0
        )
    assert graphs == []
    out = compiled(input_ids=ids).logits  # an update's forward: each block compiled
    assert len(graphs) >= 2
    torch.testing.assert_close(out, plain(input_ids=ids).logits, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in compiled.parameters())


def _summary(names: list[str], seconds: list[float]) -> dict[str, Any]:
    base = seconds[0]
    return {
        "sides": {
            n: {"median": s, "min": s, "max": s} for n, s in zip(names, seconds, strict=True)
        },
        "ratios": {
            n: {"median": s / base, "min": s / base, "max": s / base}
            for n, s in zip(names[1:], seconds[1:], strict=True)
        },
    }


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_the_table_names_every_side_with_its_ratio_over_the_default(trunk: str) -> None:
    data: dict[str, Any] = {
        "machine": {"commit": None, "date_utc": "2026-12-07 19:00:00 UTC"},
        "rounds": 3,
        "warmup": 1,
        "loadavg_start": [1.3, 0, 0],
        "loadavg_end": [1.5, 0, 0],
    }
    for t in TRUNKS:
        names = [f"{t}/{lever}" for lever in ("default", *LEVERS)]
        data[t] = {
            "iteration": _summary(names, [2.0, 1.6, 1.5, 1.9, 1.2]),
            "update": _summary(names, [1.0, 0.7, 0.75, 0.95, 0.5]),
        }
    text = levers_table(data)
    label = "separate critic" if trunk == "separate" else "shared trunk"
    assert f"| {label} | `default` | 2.00 (1) | 1.00 (1) |" in text
    assert f"| {label} | `fused_optimizer` | 1.60 (0.80, 0.80-0.80) | 0.70 (0.70, 0.70-0.70) |" in (
        text
    )
    assert f"| {label} | `compiled_blocks` | 1.90 (0.95, 0.95-0.95) |" in text
    assert f"| {label} | `all` | 1.20 (0.60, 0.60-0.60) | 0.50 (0.50, 0.50-0.50) |" in text
    assert "load 1.3 before, 1.5 after; commit a commit that is not in this history" in text
