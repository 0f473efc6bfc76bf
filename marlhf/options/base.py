"""The termination contract: ``SegmentationBatch`` in, ``starts: bool[B, T]`` out, validated.

A termination turns the response tokens of a batch into macro-action boundaries. It declares
what it needs in ``requires`` so callers compute only that:

- ``"text"``: decoded responses with token character spans (``batch.alignments``);
- ``"logprobs"``: per-token log-probs under the policy (``batch.logprobs``);
- ``"ref_logprobs"``: per-token log-probs under the reference (``batch.ref_logprobs``);
- ``"generator"``: a seeded ``torch.Generator`` (``batch.generator``);
- ``"entropy"``: per-position entropy of the policy's distribution (``batch.entropy``);
- ``"values"``: the critic's per-position values ``V(s_t)`` (``batch.values``).

Every output passes through :func:`validate_starts` (via :func:`compute_starts`).
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from marlhf.tokenization import TokenAlignment, TokenCodec, align_tokens

REQUIREMENTS: frozenset[str] = frozenset(
    {"text", "logprobs", "ref_logprobs", "generator", "entropy", "values"}
)


@dataclass
class SegmentationBatch:
    """The response tokens of a batch and whatever a termination asked for.

    :param response_ids: ``int64[B, T]`` response tokens, right-padded.
    :param mask: ``bool[B, T]`` True on real tokens (a prefix of each row).
    :param alignments: per row, the decoded text and each *real* token's character span.
    :param logprobs: ``float[B, T]`` policy log-probs of the taken tokens.
    :param ref_logprobs: ``float[B, T]`` reference log-probs of the taken tokens.
    :param generator: seeded generator for randomised terminations (on the CPU).
    :param turn_starts: ``bool[B, T]`` the first token of each agent turn of a multi-turn
        episode (the ``turn`` termination reads it); ``None``: one turn per row.
    :param entropy: ``float[B, T]`` entropy of the policy's distribution at each position.
    :param values: ``float[B, T]`` critic values of the state before each token.
    """

    response_ids: torch.Tensor
    mask: torch.Tensor
    alignments: list[TokenAlignment] | None = None
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    generator: torch.Generator | None = None
    turn_starts: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """``int64[B]``: real tokens per row."""
        return self.mask.sum(dim=1)

    @classmethod
    def build(
        cls,
        response_ids: torch.Tensor,
        mask: torch.Tensor,
        requires: frozenset[str] = frozenset(),
        *,
        codec: TokenCodec | None = None,
        logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        turn_starts: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> SegmentationBatch:
        """Assemble a batch with exactly what ``requires`` names; missing inputs are an error.
        ``turn_starts`` (multi-turn episodes) is passed on whatever the requirements."""
        unknown = set(requires) - REQUIREMENTS
        if unknown:
            raise ValueError(f"requires: unknown {sorted(unknown)}; valid: {sorted(REQUIREMENTS)}")
        batch = cls(response_ids=response_ids, mask=mask.bool(), turn_starts=turn_starts)
        if "text" in requires:
            if codec is None:
                raise ValueError("SegmentationBatch.build: 'text' is required but codec is None")
            lengths = batch.lengths.tolist()
            ids = response_ids.tolist()
            batch.alignments = [
                align_tokens(codec, row[:n]) for row, n in zip(ids, lengths, strict=True)
            ]
        named = (
            ("logprobs", logprobs),
            ("ref_logprobs", ref_logprobs),
            ("entropy", entropy),
            ("values", values),
        )
        for name, value in named:
            if name in requires:
                if value is None:
                    raise ValueError(f"SegmentationBatch.build: {name!r} is required but None")
                setattr(batch, name, value)
        if "generator" in requires:
            batch.generator = generator if generator is not None else torch.Generator()
        return batch


@dataclass
class TerminationStats:
    """Counters a termination keeps for the logs (e.g. parse failures that fell back)."""

    calls: int = 0
    rows: int = 0
    fallbacks: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Termination(ABC):
    """A rule that cuts each response into macro actions.

    Subclasses set ``requires`` and implement :meth:`starts`. They need not enforce the
    invariants themselves beyond marking sensible boundaries: :func:`compute_starts` forces
    ``starts[:, 0]`` on non-empty rows, drops starts on padding, applies ``isolate_last`` and
    then validates.
    """

    name: ClassVar[str] = "termination"
    # A class attribute for fixed rules; combinators set it per instance (union of their parts).
    requires: frozenset[str] = frozenset()

    #: set by ``make_termination`` when the subclass does not define ``spec`` itself
    _built_from_spec: str | None = None
    #: the arguments the rule's constructor was called with (recorded by ``__new__``, which
    #: sees the call of the most derived ``__init__``, dataclass-generated ones included), so
    #: that the default :attr:`spec` can hold them
    _init_args: dict[str, Any] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Termination:
        self = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return self  # the real __init__ raises its own error
        self._init_args = _named_arguments(signature, bound.arguments)
        return self

    def __init__(self) -> None:
        self.stats = TerminationStats()

    @abstractmethod
    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        """``bool[B, T]``: True where a macro action begins."""

    @property
    def spec(self) -> str:
        """A string that :func:`marlhf.options.make_termination` turns back into this rule.

        By default: the spec it was built from by ``make_termination``, else its registered
        name with the arguments its constructor was called with (``name:key=value;...``), so a
        plugged-in rule saves and loads with its arguments either way.

        :raises ValueError: when an argument has no spec form: anything but a number, a bool,
            a plain string (non-empty, no ``;=:|(),``, no surrounding spaces, not reading as a
            number or bool) or a non-empty flat list of those; give the class its own ``spec``
            property then.
        """
        if self._built_from_spec:
            return self._built_from_spec
        args = self._init_args or {}
        if not args:
            return self.name
        parts = [f"{key}={_spec_value(type(self).__name__, key, v)}" for key, v in args.items()]
        return f"{self.name}:" + ";".join(parts)

    def config_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this rule (checkpoints store them with its name).

        By default the arguments its constructor was called with; a rule that normalises its
        arguments (the combinators build their parts) returns the normalised ones.
        """
        if self._init_args is None:
            raise ValueError(
                f"{type(self).__name__}: its constructor arguments were not recorded; define "
                "config_kwargs() to return them"
            )
        return dict(self._init_args)

    def display_name(self) -> str:
        """The spec for messages, or the class name with its arguments when it has no spec form
        (never raises: only saving needs a spec)."""
        try:
            return str(self.spec)
        except ValueError:
            return f"{type(self).__name__}(<no spec form: {self._init_args}>)"

    def __repr__(self) -> str:
        try:
            return f"{type(self).__name__}({self.spec!r})"
        except ValueError:
            return self.display_name()


def _named_arguments(signature: inspect.Signature, arguments: dict[str, Any]) -> dict[str, Any]:
    """The explicitly passed arguments by name (``**kwargs`` flattened, ``self`` dropped)."""
    out: dict[str, Any] = {}
    for name, value in list(arguments.items())[1:]:
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                out[f"*{name}"] = value  # no spec form: reported by _spec_value
        elif kind is inspect.Parameter.POSITIONAL_ONLY:
            out[f"*{name}"] = [value]  # a spec passes keywords: no spec form either
        else:
            out[name] = value
    return out


def _reads_as_other_type(text: str) -> bool:
    """Whether the spec parser would read ``text`` back as a number or a bool."""
    if text.strip().lower() in ("true", "false", "inf", "+inf", "infinity"):
        return True
    try:
        float(text)
    except ValueError:
        return text != text.strip()  # the parser strips whitespace
    return True


def _spec_value(owner: str, key: str, value: Any) -> str:
    """``value`` in the spec grammar (what ``parse_spec`` reads back to the same value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):  # numpy integers and int subclasses as plain ints
        return repr(int(value))
    if isinstance(value, numbers.Real) and not math.isnan(value):
        return "inf" if value == math.inf else repr(float(value))
    plain = isinstance(value, str) and value and not any(c in value for c in ";=:|(),")
    if plain and not _reads_as_other_type(value):
        return str(value)
    if (
        isinstance(value, list | tuple)
        and value
        and not any(isinstance(v, list | tuple) for v in value)  # flat lists only
        and not key.startswith("*")
    ):
        return ",".join(_spec_value(owner, key, v) for v in value) + (
            "," if len(value) == 1 else ""
        )
    raise ValueError(
        f"{owner}: argument {key}={value!r} has no spec form (valid: numbers, true/false, plain "
        "strings without ;=:|(), that do not read as numbers, and non-empty flat lists of "
        "those); "
        "define a `spec` property on "
        f"{owner} to save and load it"
    )


class SegmentationError(ValueError):
    """A termination produced boundaries that break the segmentation invariants."""


def validate_starts(
    starts: torch.Tensor,
    mask: torch.Tensor,
    *,
    name: str = "termination",
    isolate_last: bool = False,
) -> None:
    """Check the invariants; raise :class:`SegmentationError` naming the termination and row.

    - ``starts`` is ``bool`` with the shape and device of ``mask``;
    - ``mask`` is a prefix in every row (right padding);
    - the first real token of every non-empty row starts a segment;
    - padding is never a start (so no segment is empty and lengths sum to the response length);
    - with ``isolate_last``, the last real token starts its own segment.
    """
    if not isinstance(starts, torch.Tensor):
        raise SegmentationError(f"{name}: starts must be a torch.Tensor, got {type(starts)}")
    if starts.dtype != torch.bool:
        raise SegmentationError(f"{name}: starts must have dtype torch.bool, got {starts.dtype}")
    if starts.shape != mask.shape:
        raise SegmentationError(
            f"{name}: starts has shape {tuple(starts.shape)}, expected {tuple(mask.shape)}"
        )
    if starts.device != mask.device:
        raise SegmentationError(f"{name}: starts on {starts.device}, mask on {mask.device}")
    if mask.shape[1] == 0:
        return
    lengths = mask.sum(dim=1)
    cols = torch.arange(mask.shape[1], device=mask.device)
    bad = (mask != (cols[None, :] < lengths[:, None])).any(dim=1)
    if bad.any():
        raise SegmentationError(f"{name}: mask of row {int(bad.nonzero()[0])} is not a prefix")
    bad = (lengths > 0) & ~starts[:, 0]
    if bad.any():
        row = int(bad.nonzero()[0])
        raise SegmentationError(f"{name}: row {row} does not start a segment at its first token")
    bad = (starts & ~mask).any(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise SegmentationError(f"{name}: row {row} has a segment start on padding")
    if isolate_last:
        last = (lengths - 1).clamp(min=0)
        ok = starts.gather(1, last[:, None]).squeeze(1) | (lengths == 0)
        if not ok.all():
            row = int((~ok).nonzero()[0])
            raise SegmentationError(f"{name}: row {row} does not isolate its last token")


def compute_starts(
    termination: Termination, batch: SegmentationBatch, *, isolate_last: bool = False
) -> torch.Tensor:
    """Run ``termination`` on ``batch``, normalise its output and validate it.

    Normalisation is limited to what every rule agrees on: the first real token starts a
    segment, padding never does, and ``isolate_last`` adds a boundary before the last real
    token. Anything else wrong (shape, dtype, device) is an error, not silently fixed.
    """
    raw = termination.starts(batch)
    mask = batch.mask
    display = getattr(termination, "display_name", None)
    name = display() if callable(display) else type(termination).__name__
    if not isinstance(raw, torch.Tensor) or raw.dtype != torch.bool or raw.shape != mask.shape:
        validate_starts(raw, mask, name=name)  # raises with the precise complaint
    out = raw & mask
    lengths = mask.sum(dim=1)
    if out.shape[1] > 0:
        out[:, 0] |= lengths > 0
        if isolate_last:
            last = (lengths - 1).clamp(min=0)
            out.scatter_(1, last[:, None], out.gather(1, last[:, None]) | (lengths > 0)[:, None])
    validate_starts(out, mask, name=name, isolate_last=isolate_last)
    termination.stats.calls += 1
    termination.stats.rows += int(mask.shape[0])
    return out


def lengths_to_starts(lengths: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Build ``bool[B, width]`` starts from per-row segment lengths (a test and tooling helper)."""
    out = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, row in enumerate(lengths):
        pos = 0
        for n in row:
            if n <= 0:
                raise ValueError(f"lengths_to_starts: row {b} has a non-positive length {n}")
            if pos >= width:
                raise ValueError(f"lengths_to_starts: row {b} is longer than width {width}")
            out[b, pos] = True
            pos += n
    return out
