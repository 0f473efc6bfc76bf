"""``CaughtUp``: a read runs the owner's catch-up first; a write does too only with ``on_set``."""

from __future__ import annotations

import torch

from marlhf.envs.core.caught_up import CaughtUp


class _Owner:
    lazy = CaughtUp("_catch_up", doc="a lazily written field")
    eager = CaughtUp("_catch_up", on_set=True)
    _lazy: torch.Tensor
    _eager: torch.Tensor

    def __init__(self) -> None:
        self.calls = 0
        self.pending = 0.0
        self._lazy, self._eager = torch.zeros(2), torch.zeros(2)

    def _catch_up(self) -> None:
        self.calls += 1
        self._lazy += self.pending
        self._eager += self.pending
        self.pending = 0.0


def test_a_read_sees_the_deferred_writes_and_a_write_catches_up_only_when_asked() -> None:
    owner = _Owner()
    owner.pending = 3.0
    assert owner.lazy.tolist() == [3.0, 3.0] and owner.calls == 1
    owner.pending = 1.0
    old = owner._eager
    owner.eager = torch.ones(2)  # the deferred write lands in the tensor being replaced
    assert old.tolist() == [4.0, 4.0] and owner.eager.tolist() == [1.0, 1.0]
    assert owner.calls == 3  # (the write's catch-up, then the read's)
    owner.pending = 5.0
    owner.lazy = torch.zeros(2)  # no catch-up: the pending write goes to the new tensor
    assert owner.calls == 3
    assert owner.lazy.tolist() == [5.0, 5.0]
    assert _Owner.lazy.__doc__ == "a lazily written field"  # (the class's attribute)
