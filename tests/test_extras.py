"""The optional-extra marks: skip without the extra, never skip under `make test`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

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


def test_ci_installs_every_extra_and_requires_them() -> None:
    # The marks above skip nothing under `make test` only if CI runs it, with the variable set,
    # in an environment that holds every extra the marks name.
    root = Path(__file__).resolve().parent.parent
    assert re.search(r"^make test$", (root / ".ci" / "run").read_text(), re.M)
    makefile = (root / "Makefile").read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None and "MARLHF_REQUIRE_EXTRAS=1" in recipe.group(1)
    assert '-e ".[all,dev]"' in makefile  # the environment make test builds
    optional = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (everything,) = optional["all"]
    in_all = set(re.fullmatch(r"marlhf\[(.*)\]", everything).group(1).split(","))  # type: ignore[union-attr]
    named = {extra for extra, _ in extras.EXTRAS.values()}
    assert named <= in_all <= set(optional), (named - in_all, in_all - set(optional))
