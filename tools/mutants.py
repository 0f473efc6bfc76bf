"""Mutation check of the credit maths (issue 21): apply named mutations, one at a time, to a copy
of the package and run the tests that should catch each; list the mutants that survive.

Each mutation is one exact text replacement (the script fails loudly when the text is not found
exactly once, so a refactor cannot silently retire a mutant). A mutant is *killed* when its tests
fail, and *survives* when they all pass. Run it with ``make mutants`` or::

    python tools/mutants.py [--only NAME ...] [--list]

Exit status 0 when no mutant survives (and the unmutated copy passes), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIDELITY = "tests/agents/test_fidelity.py"


@dataclass(frozen=True)
class Mutant:
    """``old`` becomes ``new`` in ``path``; ``tests`` should then fail."""

    name: str
    path: str
    old: str
    new: str
    why: str
    tests: tuple[str, ...] = (FIDELITY,)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "std-ddof",
        "marlhf/credit/estimators.py",
        "sq / (size - 1).clamp(min=1)",
        "sq / size.clamp(min=1)",
        "GRPO's group std with ddof 0 instead of Bessel's correction",
    ),
    Mutant(
        "kl-sign",
        "marlhf/credit/kl.py",
        "diff = logprobs - ref_logprobs",
        "diff = ref_logprobs - logprobs",
        "the KL estimate of KL(ref || pi) instead of KL(pi || ref)",
    ),
    Mutant(
        "whitening-scope-rows",
        "marlhf/credit/estimators.py",
        "    return global_whiten(x, mask)",
        "    return torch.cat([global_whiten(x[i : i + 1], mask[i : i + 1]) "
        "for i in range(x.shape[0])])",
        "REINFORCE++ whitened per response instead of over the batch",
    ),
    Mutant(
        "whitening-scope-padding",
        "marlhf/credit/advantages.py",
        'mean, var, _ = _masked_moments(x, mask, "whiten")',
        'mean, var, _ = _masked_moments(x, torch.ones_like(mask), "whiten")',
        "whitening statistics over the padding too",
    ),
    Mutant(
        "whitening-scope-prob-mask",
        "marlhf/algorithms/ppo.py",
        "advantages = mb.advantages if whitened else self._advantages(mb, mask)",
        "advantages = mb.advantages if whitened else self._advantages(mb, mb.response_mask)",
        "minibatch whitening over the tokens SPO's mask removed",
    ),
    Mutant(
        "sequence-ratio-weighting",
        "marlhf/algorithms/losses.py",
        "loss = seq_loss[rows].sum() / rows.sum().clamp(min=1).to(seq_loss.dtype)",
        "loss = (seq_loss / lengths)[rows].sum() / rows.sum().clamp(min=1).to(seq_loss.dtype)",
        "GSPO's per-response term divided by the response length again (the old defect)",
    ),
    Mutant(
        "sequence-ratio-token-weighted",
        "marlhf/algorithms/losses.py",
        "loss = seq_loss[rows].sum() / rows.sum().clamp(min=1).to(seq_loss.dtype)",
        "loss = (seq_loss * lengths)[rows].sum() / lengths[rows].sum()",
        "GSPO's responses weighted by their lengths (a token mean of per-token copies)",
    ),
    Mutant(
        "dr-grpo-constant",
        "marlhf/algorithms/losses.py",
        "return kept.sum() / float(mask.numel() or 1)",
        "return kept.sum() / mask.sum().clamp(min=1).to(kept.dtype)",
        "Dr. GRPO's constant replaced by the number of real tokens",
    ),
    Mutant(
        "kl-loss-aggregation",
        "marlhf/algorithms/losses.py",
        "    return aggregate(kl, mask, loss_agg)",
        "    return masked_mean(kl, mask)",
        "the KL in the loss always a token mean, whatever loss_agg says (the old defect)",
    ),
    Mutant(
        "kl-loss-weight",
        "marlhf/algorithms/ppo.py",
        "loss = loss + pg_w * (float(self.kl_ctl.value) * kl)",
        "loss = loss + tok_w * (float(self.kl_ctl.value) * kl)",
        "micro-batches weight the KL in the loss by tokens, not as the policy loss",
        ("tests/agents/test_micro_batch.py",),
    ),
    Mutant(
        "k1-in-loss-accepted",
        "marlhf/algorithms/config.py",
        'if self.kl_in == "loss" and self.kl_estimator not in KL_LOSS_ESTIMATORS:',
        "if False:",
        "k1 accepted in the loss, where it does not regularise",
    ),
    Mutant(
        "kl-clamp-ignored",
        "marlhf/credit/kl.py",
        "return out if clamp is None else out.clamp(-clamp, clamp)",
        "return out",
        "the k3 clamp (verl, VinePPO) ignored",
    ),
    Mutant(
        "dual-clip-ignored",
        "marlhf/algorithms/losses.py",
        "    if dual is None:\n        return loss",
        "    if True:\n        return loss",
        "verl's dual clip ignored",
    ),
    Mutant(
        "prob-mask-direction",
        "marlhf/credit/estimators.py",
        "return mask & ~(logprobs.exp() > threshold)",
        "return mask & (logprobs.exp() > threshold)",
        "SPO's mask keeps the confident tokens and removes the others",
    ),
    Mutant(
        "reinforce-pp-baseline-form",
        "marlhf/credit/estimators.py",
        "mean, _, _ = group_stats(task_scores(batch, config), batch.group_ids)",
        "mean, _, _ = group_stats(sequence_returns(batch), batch.group_ids)",
        "OpenRLHF's form subtracting the KL-inclusive group mean (the old hybrid)",
    ),
    Mutant(
        "reinforce-pp-default-form",
        "marlhf/algorithms/config.py",
        'reinforce_pp_form: ReinforcePPForm = field(\n        default="openrlhf",',
        'reinforce_pp_form: ReinforcePPForm = field(\n        default="verl",',
        "verl's form as the default",
    ),
    Mutant(
        "dapo-filter-input",
        "marlhf/credit/estimators.py",
        "_, std, _ = group_stats(task_scores(batch), batch.group_ids)",
        "_, std, _ = group_stats(sequence_returns(batch), batch.group_ids)",
        "DAPO's filter on the KL-inclusive return instead of the task score (the old defect)",
    ),
    Mutant(
        "remax-baseline-shaping",
        "marlhf/credit/estimators.py",
        "    if clip is not None:\n        baseline = baseline.clamp(-clip, clip)",
        "    pass",
        "ReMax's baseline without the reward clip its return has",
    ),
    Mutant(
        "remax-return",
        "marlhf/credit/estimators.py",
        "returns = returns_to_go(batch.rewards, batch.mask, float(config.gamma)).double()",
        "returns = sequence_returns(batch).double()[:, None].expand_as(batch.rewards)",
        "ReMax's return the whole response's total instead of the return-to-go",
    ),
)


def _copy_tree(dest: Path) -> None:
    for name in ("marlhf", "tests"):
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _apply(root: Path, mutant: Mutant) -> None:
    path = root / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.name!r}: the text to mutate occurs {count} times in {mutant.path} "
            f"(expected exactly once): {mutant.old!r}"
        )
    path.write_text(text.replace(mutant.old, mutant.new))


def _run_tests(root: Path, tests: tuple[str, ...]) -> tuple[bool, float, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    begin = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            *tests,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, time.monotonic() - begin, tail[-1] if tail else ""


def _check_copy_is_imported(root: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import marlhf; print(marlhf.__file__)"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"the mutated copy is not the one imported (marlhf from {out})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTANTS]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:32s} {m.path}: {m.why}")
        return 0
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown mutant {unknown[0]!r}; valid: {names}")
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    survivors = []
    with tempfile.TemporaryDirectory(prefix="marlhf-mutants-") as tmp:
        clean = Path(tmp) / "clean"
        _copy_tree(clean)
        _check_copy_is_imported(clean)
        for m in chosen:  # every mutant's text is present before anything runs
            if (clean / m.path).read_text().count(m.old) != 1:
                _apply(clean, m)  # raises with the count
        baseline = sorted({t for m in chosen for t in m.tests})
        ok, seconds, tail = _run_tests(clean, tuple(baseline))
        print(f"{'unmutated':32s} {'pass' if ok else 'FAIL':8s} {seconds:6.1f}s  {tail}")
        if not ok:
            print("the unmutated code fails its tests: fix that first", file=sys.stderr)
            return 1
        for m in chosen:
            work = Path(tmp) / m.name
            shutil.copytree(clean, work)
            _apply(work, m)
            passed, seconds, tail = _run_tests(work, m.tests)
            status = "SURVIVED" if passed else "killed"
            print(f"{m.name:32s} {status:8s} {seconds:6.1f}s  {m.why}")
            if passed:
                survivors.append(m.name)
            shutil.rmtree(work)
    print(f"\n{len(chosen) - len(survivors)}/{len(chosen)} mutants killed; surviving: "
          f"{survivors if survivors else 'none'}")  # fmt: skip
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
