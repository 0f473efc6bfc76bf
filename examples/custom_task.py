"""Your own task and termination, trained and compared from the CLI.

The task: the prompt is three letters; the answer should repeat the FIRST of them ``horizon``
times. The score (fraction of answer tokens equal to that letter) arrives at the end. The
termination ``letter_runs`` makes each run of one repeated letter a macro action.

Run the whole walk-through (a short train, an eval and a two-seed comparison, ~2 min on 2 cores)::

    python examples/custom_task.py

or use the module from the command line, as ``--import`` makes its registrations visible to
``marlhf`` and to ``compare``'s worker processes::

    marlhf train --import examples/custom_task.py -s task.id=marlhf/RepeatFirst-v0 \\
        -s termination=letter_runs -s total_timesteps=8192 -s output_dir=runs/repeat
    marlhf eval -s model.path=runs/repeat/final
    marlhf compare --import examples/custom_task.py -s task.id=marlhf/RepeatFirst-v0 \\
        -s task.kwargs={} -s 'terminations=[letter_runs, ngram:4]' -s output_dir=runs/repeat-cmp
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import torch

from marlhf.envs import Prompt, RewardBatch, RewardFunction, Task, register_task
from marlhf.options import SegmentationBatch, Termination, register_termination
from marlhf.tokenization import SymbolCodec


class FirstLetterReward(RewardFunction):
    mode: ClassVar = "terminal"  # called once per episode, on the rows that just finished

    def __call__(self, batch: RewardBatch) -> torch.Tensor:  # -> float[R], one score a row
        first = torch.tensor([p.ids[0] for p in batch.prompts], device=batch.response_ids.device)
        hits = (batch.response_ids == first[:, None]) & batch.response_mask
        return hits.sum(dim=1) / batch.response_mask.shape[1]


class RepeatFirstTask(Task):
    def __init__(self, horizon: int = 8, letters: str = "abcd") -> None:
        self.name = "RepeatFirst"
        self.codec = SymbolCodec(list(letters), eos=None)  # ids: 0 pad, then the letters
        self.max_prompt_len, self.max_new_tokens = 3, horizon
        self.reward_fn = FirstLetterReward()
        self.optimal_return, self.random_return = 1.0, 1.0 / len(letters)

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        ids = rng.integers(1, self.codec.vocab_size, size=(n, 3)).tolist()
        return [Prompt(row, text=self.codec.decode(row)) for row in ids]


register_task("RepeatFirst", RepeatFirstTask)  # -> env id "marlhf/RepeatFirst-v0"


@register_termination("letter_runs")  # -> the spec "letter_runs" in configs and the CLI
class LetterRuns(Termination):
    """A macro action is a run of one repeated token: a new one starts where the token changes."""

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        out = torch.zeros_like(batch.mask)
        out[:, 1:] = batch.response_ids[:, 1:] != batch.response_ids[:, :-1]
        return out & batch.mask  # marlhf adds the start of the first token


def main() -> None:
    from marlhf.cli.main import main as marlhf

    # MARLHF_SMALL=1 (the test suite) shrinks the budgets; the numbers below give a visible gain
    small = os.environ.get("MARLHF_SMALL") == "1"
    budget, seeds = ("512", "[0]") if small else ("8192", "[0, 1]")
    here = __file__
    common = ["--import", here, "-s", "task.id=marlhf/RepeatFirst-v0", "-s", "task.kwargs={}"]
    steps = [
        ["train", *common, "-s", "termination=letter_runs", "-s", f"total_timesteps={budget}",
         "-s", "output_dir=runs/example-repeat"],
        ["eval", "-s", "model.path=runs/example-repeat/final", "-s", "episodes=16"],
        ["compare", *common, "-s", "terminations=[letter_runs, ngram:4]", "-s", f"seeds={seeds}",
         "-s", f"total_timesteps={budget}", "-s", "output_dir=runs/example-repeat-compare"],
    ]  # fmt: skip
    for argv in steps:
        print("$ marlhf", " ".join(argv), flush=True)
        if marlhf(argv) != 0:
            raise SystemExit(f"marlhf {argv[0]} failed")


if __name__ == "__main__":
    main()
