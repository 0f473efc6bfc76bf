"""Registry, string specs, plugging (decorator and entry points) and bad input."""

from __future__ import annotations

import math
import runpy
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from marlhf.options import (
    MinLength,
    NGram,
    RandomNGram,
    SegmentationBatch,
    SegmentationError,
    Termination,
    Union,
    available_terminations,
    compute_starts,
    make_termination,
    register_termination,
)
from marlhf.options import registry as registry_module
from tests.extras import spec_param
from tests.options.strategies import CODEC, DEFAULT_SPECS, EXTRA_SPECS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Restore the registry (and the entry-point flag) after a test that registers names."""
    saved = dict(registry_module._REGISTRY)
    loaded = registry_module._entry_points_loaded
    yield
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(saved)
    registry_module._entry_points_loaded = loaded


def sample_batch(requires: frozenset[str]) -> SegmentationBatch:
    texts = ["the cat sat. the mat, on\nthe cat!", "def f(x):\n return 3"]
    rows = [CODEC.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    gen = torch.Generator().manual_seed(3)
    lp = -torch.rand(ids.shape, generator=gen)
    return SegmentationBatch.build(
        ids,
        ids != 0,
        requires,
        codec=CODEC,
        logprobs=lp,
        ref_logprobs=lp,
        generator=gen,
        entropy=-lp,
        values=lp.cumsum(dim=1),
    )


@pytest.mark.parametrize(
    "spec",
    [spec_param(s) for s in [DEFAULT_SPECS.get(n, n) for n in available_terminations()]]
    + [spec_param(s) for s in EXTRA_SPECS],
)
def test_spec_round_trips(spec: str) -> None:
    term = make_termination(spec)
    again = make_termination(term.spec)
    assert type(again) is type(term)
    assert again.spec == term.spec
    assert make_termination(term) is term
    a = compute_starts(term, sample_batch(term.requires))
    b = compute_starts(again, sample_batch(again.requires))
    assert torch.equal(a, b)


def test_spec_arguments_reach_the_constructor() -> None:
    term = make_termination("random_ngram:sizes=2,7;repeat=4")
    assert isinstance(term, RandomNGram)
    assert (term.sizes, term.repeat) == ((2, 7), 4)
    assert make_termination("random_ngram:sizes=4").spec == "random_ngram:sizes=4;repeat=3"
    union = make_termination("union:(max_length:2|perplexity:released)|ngram:inf")
    assert isinstance(union, Union)
    assert [p.spec for p in union.parts] == [
        "max_length:2|perplexity:rule=released",
        "ngram:inf",
    ]
    assert union.spec == "union:(max_length:2|perplexity:rule=released)|ngram:inf"


@pytest.mark.parametrize(
    "spec",
    ["nope", "ngram-x:3", "", "   ", ":5", "ngram:n=2;3", "ngram:2-x=1", "union:(ngram:1",
     "union:ngram:1)", "union:ngram:1|", "min_length:x|ngram:2", "max_length:3",
     "union:bogus|ngram:1"],
)  # fmt: skip
def test_unknown_or_malformed_specs_list_registered_names(spec: str) -> None:
    with pytest.raises(ValueError, match=r"registered: .*'ngram'.*'perplexity'"):
        make_termination(spec)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ngram:0", r"n=0 must be a positive integer or inf"),
        ("ngram:-1", r"n=-1 must be a positive integer or inf"),
        ("ngram:2.5", r"n=2\.5 must be a positive integer or inf"),
        ("ngram:true", r"n=True must be a positive integer, not a bool"),
        ("ngram:1;2", r"ngram:1;2"),  # too many arguments, named with the spec
        ("random_ngram:sizes=", r"sizes='' must be a list of positive integers"),
        ("random_ngram:sizes=1,0", r"sizes=0 must be a positive integer"),
        ("random_ngram:repeat=0", r"repeat=0 must be a positive integer"),
        (
            "perplexity:rule=exact",
            r"rule='exact' is not one of \('consecutive', 'macro', 'released', 'paper'\)",
        ),
        ("punctuation:level=word", r"level='word' is not one of \['clause', 'sentence'\]"),
        ("union:ngram:2", r"at least two"),
        ("min_length:0|ngram:2", r"min_length: n=0 must be a positive integer"),
        ("max_length:-3|ngram:2", r"max_length: n=-3 must be a positive integer"),
    ],
)
def test_bad_arguments_give_clear_errors(spec: str, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make_termination(spec)


def test_bad_arguments_from_python() -> None:
    with pytest.raises(ValueError, match=r"sizes=\[\] is empty"):
        RandomNGram(sizes=[])
    with pytest.raises(TypeError, match="termination=3 must be a Termination or a spec"):
        MinLength(3, "ngram:2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two"):
        Union([NGram(2)])


class WrongShape(Termination):
    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        return batch.mask[:, :-1].clone()


class WrongDtype(Termination):
    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        return batch.mask.long()


@pytest.mark.parametrize(
    ("term", "match"),
    [
        (WrongShape(), r"^termination: starts has shape \(2, 8\), expected \(2, 9\)"),
        (WrongDtype(), r"^termination: starts must have dtype torch.bool, got torch.int64"),
        (Union([WrongDtype(), NGram(2)]), r"^termination: starts must be a bool tensor"),
    ],
)
def test_validator_catches_wrong_shape_and_dtype(term: Termination, match: str) -> None:
    batch = SegmentationBatch(
        response_ids=torch.ones(2, 9, dtype=torch.long), mask=torch.ones(2, 9, dtype=torch.bool)
    )
    with pytest.raises(SegmentationError, match=match):
        compute_starts(term, batch)


def test_validator_names_a_registered_termination(clean_registry: None) -> None:
    register_termination("broken_shape")(WrongShape)
    with pytest.raises(SegmentationError, match=r"^broken_shape: starts has shape"):
        compute_starts(make_termination("broken_shape"), sample_batch(frozenset()))


def test_register_user_class_and_reject_duplicates(clean_registry: None) -> None:
    @register_termination("every_third")
    class EveryThird(NGram):
        def __init__(self) -> None:
            super().__init__(3)

        @property
        def spec(self) -> str:
            return self.name

    assert "every_third" in available_terminations()
    term = make_termination("every_third")
    assert isinstance(term, EveryThird) and term.spec == "every_third"
    with pytest.raises(ValueError, match="'ngram' is already registered"):
        register_termination("ngram")(EveryThird)
    with pytest.raises(ValueError, match="must be alphanumeric"):
        register_termination("bad name")


def test_entry_point_plugin_package(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plugin package's own entry-point table, served by a fake distribution."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    package = ROOT / "examples" / "plugin_package"
    table = tomllib.loads((package / "pyproject.toml").read_text())
    group = registry_module.ENTRY_POINT_GROUP
    declared = table["project"]["entry-points"][group]
    points = [EntryPoint(name=k, value=v, group=group) for k, v in declared.items()]
    seen: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        seen.append(group)
        return points

    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    registry_module._entry_points_loaded = False
    assert "lines" in available_terminations()
    assert seen == [registry_module.ENTRY_POINT_GROUP]
    term = make_termination("lines:every=1")
    starts = compute_starts(term, sample_batch(term.requires))
    newline = CODEC.encode("def f(x):\n")  # row 1's first line, newline included
    assert starts[1].nonzero().flatten().tolist() == [0, len(newline)]
    assert make_termination(term.spec).spec == "lines:every=1"
    sys.modules.pop("marlhf_lines", None)


def test_broken_plugin_is_skipped_with_a_warning(
    clean_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = registry_module.ENTRY_POINT_GROUP
    broken = EntryPoint(name="broken", value="no_such_module_xyz:Thing", group=group)
    monkeypatch.setattr(registry_module, "entry_points", lambda *, group: [broken])
    registry_module._entry_points_loaded = False
    with pytest.warns(RuntimeWarning, match=r"plugin 'broken' = 'no_such_module_xyz:Thing'"):
        names = available_terminations()
    assert "broken" not in names and "ngram" in names
    assert isinstance(make_termination("ngram:2"), NGram)


def test_custom_termination_example_runs(
    clean_registry: None, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(ROOT / "examples" / "custom_termination.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split(maxsplit=1) == [
        "after_token:7",
        "[[1, 0, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 1, 0, 0, 0]]",
    ]
    assert out[1].startswith("union:after_token:7|ngram:3")
    assert "after_token" in available_terminations()


def test_spec_defaults_to_the_string_a_plugged_rule_was_built_from():
    @register_termination("every_k_test")
    class EveryK(Termination):
        def __init__(self, k: int = 2) -> None:
            super().__init__()
            self.k = k

        def starts(self, batch: SegmentationBatch) -> torch.Tensor:
            out = torch.zeros_like(batch.mask)
            out[:, :: self.k] = True
            return out & batch.mask

    term = make_termination("every_k_test:3")
    assert term.spec == "every_k_test:3"
    rebuilt = make_termination(term.spec)
    assert isinstance(rebuilt, EveryK) and rebuilt.k == 3
    assert EveryK().spec == "every_k_test"  # built directly: only the name is known


class _Marker(Termination):
    """A rule with several argument types and no ``spec`` of its own (registered per test)."""

    def __init__(
        self, k: int = 2, scale: float = 1.0, tag: str = "x", on: bool = False, **extra: object
    ) -> None:
        super().__init__()
        self.k, self.scale, self.tag, self.on, self.extra = k, scale, tag, on, extra

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        out = torch.zeros_like(batch.mask)
        out[:, :: self.k] = True
        return out & batch.mask


def test_spec_of_a_directly_built_rule_holds_its_arguments(clean_registry: None) -> None:
    register_termination("marker_test")(_Marker)
    term = _Marker(3, tag="abc", on=True, sizes=[1, 4], single=[5], top=math.inf)
    spec = term.spec
    assert spec.startswith("marker_test:k=3;tag=abc;on=true;")
    again = make_termination(spec)
    assert isinstance(again, _Marker) and again.spec == spec
    assert (again.k, again.tag, again.on) == (3, "abc", True)
    assert again.extra == {"sizes": [1, 4], "single": [5], "top": math.inf}
    assert _Marker().spec == "marker_test"  # nothing passed: the name alone


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tag": "a;b"}, r"tag='a;b' has no spec form"),
        ({"tag": "12"}, r"tag='12' has no spec form"),
        ({"tag": None}, r"tag=None has no spec form"),
        ({"thing": object()}, r"thing=<object object at .*> has no spec form"),
    ],
)
def test_argument_without_a_spec_form_raises(
    clean_registry: None, kwargs: dict[str, object], match: str
) -> None:
    register_termination("marker_test")(_Marker)
    term = _Marker(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        _ = term.spec
    assert "no spec" in repr(term)  # repr never raises


def test_spec_records_dataclass_arguments_and_plain_numbers(clean_registry: None) -> None:
    import dataclasses

    import numpy as np

    @register_termination("dc_test")
    @dataclasses.dataclass
    class Every(Termination):
        k: int = 2
        scale: float = 1.0

        def __post_init__(self) -> None:
            Termination.__init__(self)

        def starts(self, batch: SegmentationBatch) -> torch.Tensor:
            out = torch.zeros_like(batch.mask)
            out[:, :: self.k] = True
            return out & batch.mask

    # the dataclass-generated __init__ is seen: its arguments are in the spec
    assert Every(k=7).spec == "dc_test:k=7"
    # numpy numbers are written as plain numbers, not as their repr
    # numpy numbers where the annotation says int/float, on purpose
    term = Every(k=np.int64(3), scale=np.float64(0.25))  # type: ignore[arg-type]
    assert term.spec == "dc_test:k=3;scale=0.25"
    again = make_termination(term.spec)
    assert isinstance(again, Every) and (again.k, again.scale) == (3, 0.25)
    assert type(again.scale) is float


def test_nested_lists_have_no_spec_form(clean_registry: None) -> None:
    register_termination("marker_test")(_Marker)
    with pytest.raises(ValueError, match=r"sizes=\[\[1, 2\], \[3\]\] has no spec form"):
        _ = _Marker(sizes=[[1, 2], [3]]).spec


def test_a_rule_without_a_spec_form_still_segments(clean_registry: None) -> None:
    # only saving needs a spec: running the rule (and its messages) must not raise for it
    term = _Marker(2, thing=object())
    batch = SegmentationBatch(
        response_ids=torch.ones(2, 5, dtype=torch.long), mask=torch.ones(2, 5).bool()
    )
    starts = compute_starts(term, batch)
    assert starts[0].tolist() == [True, False, True, False, True]
    assert "no spec form" in term.display_name() and "thing" in term.display_name()


def test_positional_only_arguments_have_no_spec_form(clean_registry: None) -> None:
    @register_termination("posonly_test")
    class PosOnly(Termination):
        def __init__(self, k: int, /) -> None:
            super().__init__()
            self.k = k

        def starts(self, batch: SegmentationBatch) -> torch.Tensor:
            return batch.mask.clone()

    with pytest.raises(ValueError, match=r"argument \*k=\[3\] has no spec form"):
        _ = PosOnly(3).spec
