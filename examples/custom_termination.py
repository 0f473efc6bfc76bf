"""Plug a new macro-action termination into marlhf: subclass, register, use by name.

Run: ``python examples/custom_termination.py``. A third-party package can do the same through
the ``marlhf.terminations`` entry-point group instead of importing this file (see
``examples/plugin_package``).
"""

import torch

from marlhf.options import SegmentationBatch, Termination, compute_starts, register_termination
from marlhf.options import make_termination as make


@register_termination("after_token")  # a macro ends after each `token_id`
class AfterToken(Termination):
    def __init__(self, token_id: int = 1) -> None:
        super().__init__()
        self.token_id = token_id

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        out = torch.zeros_like(batch.mask)
        out[:, 1:] = batch.response_ids[:, :-1] == self.token_id  # the token after it starts
        return out & batch.mask

    # No `spec` property needed: `AfterToken(9).spec` is "after_token:token_id=9", which
    # make_termination turns back into the same rule (checkpoints store rules that way).


if __name__ == "__main__":
    ids = torch.tensor([[5, 7, 9, 9, 9, 7, 3, 3], [7, 2, 2, 2, 2, 0, 0, 0]])
    batch = SegmentationBatch(response_ids=ids, mask=ids != 0)
    for spec in ("after_token:7", "union:after_token:7|ngram:3", "max_length:2|after_token:7"):
        term = make(spec)  # by string spec, as configs and the CLI do
        print(f"{term.spec:28s}", compute_starts(term, batch, isolate_last=True).int().tolist())
    term = AfterToken(9)  # or as a Python object
    print(f"{term.spec:28s}", compute_starts(term, batch).int().tolist())
