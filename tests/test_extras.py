"""The optional-extra marks: skip without the extra, never skip under `make test`."""

from __future__ import annotations

import pytest

from tests import extras


@pytest.mark.parametrize(("required", "skips"), [("0", True), ("1", False)])
def test_missing_extra_skips_unless_required(monkeypatch, required: str, skips: bool) -> None:
    monkeypatch.setattr(extras, "_installed", lambda module: False)
    monkeypatch.setenv("MARLHF_REQUIRE_EXTRAS", required)
    mark = extras.needs("spacy")
    assert mark.args[0] is skips
    assert "pip install 'marlhf[text]'" in mark.kwargs["reason"]


def test_installed_extra_never_skips(monkeypatch) -> None:
    monkeypatch.setattr(extras, "_installed", lambda module: True)
    monkeypatch.delenv("MARLHF_REQUIRE_EXTRAS", raising=False)
    assert extras.needs("spacy", "reasoning_gym").args[0] is False
