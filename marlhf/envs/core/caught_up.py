"""A tensor attribute written lazily: every read first runs its owner's catch-up method.

The batched env's fast path and the rollout buffer both defer per-step writes while every row
is active (one write of many columns later costs less than one write a step), and both must
show the written values to whoever reads the field. :class:`CaughtUp` is that read once, in
place of a property and setter per field.
"""

from __future__ import annotations

from typing import Any

import torch


class CaughtUp:
    """A tensor attribute stored under ``_<name>``; a read runs ``owner.<catch_up>()`` first.

    :param catch_up: the owner's method that writes what was deferred into the stored tensors.
    :param on_set: also catch up before an assignment (the deferred writes land in the tensor
        being replaced, not in the new one), for an owner whose deferred steps outlive a
        field's replacement.
    :param doc: the attribute's docstring.
    """

    def __init__(self, catch_up: str, *, on_set: bool = False, doc: str = "") -> None:
        self.catch_up, self.on_set, self.__doc__ = catch_up, on_set, doc
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: Any = None) -> torch.Tensor:
        if obj is None:
            return self  # type: ignore[return-value]  # (the class's attribute: for docs)
        getattr(obj, self.catch_up)()
        value: torch.Tensor = getattr(obj, self.slot)
        return value

    def __set__(self, obj: Any, value: torch.Tensor) -> None:
        if self.on_set:
            getattr(obj, self.catch_up)()
        setattr(obj, self.slot, value)
