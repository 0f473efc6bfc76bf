"""Macro-action options: terminations, segmentation utilities and the SMDP wrapper.

Importing this package registers every built-in termination (``ngram``, ``random_ngram``,
``perplexity``, ``punctuation``, ``union``, ``min_length``, ``max_length``, the turn level
``turn`` and nesting ``within`` (``A > B``), the cut-budget rules ``entropy``, ``value_change``,
``even``, ``random_cuts``, ``surprisal``, ``cap`` and ``learned``, and, when their modules are
present, ``treesitter`` and ``parse``); ``available_terminations()`` lists them.
"""

import importlib
import importlib.util

from marlhf.options.base import (
    SegmentationBatch,
    SegmentationError,
    Termination,
    TerminationStats,
    compute_starts,
    lengths_to_starts,
    validate_starts,
)
from marlhf.options.budget import (
    Cap,
    CutBudget,
    EvenCuts,
    RandomCuts,
    ScoredTermination,
    Surprisal,
)
from marlhf.options.combinators import MaxLength, MinLength, Union
from marlhf.options.entropy import Entropy
from marlhf.options.learned import Learned
from marlhf.options.lowprob import LowProbability
from marlhf.options.ngram import NGram, RandomNGram
from marlhf.options.perplexity import Perplexity
from marlhf.options.punctuation import Punctuation
from marlhf.options.registry import (
    available_terminations,
    build_termination,
    make_termination,
    parse_spec,
    register_termination,
    termination_config,
)
from marlhf.options.segments import (
    REDUCTIONS,
    broadcast_to_tokens,
    num_segments,
    position_in_segment,
    segment_ids,
    segment_lengths,
    segment_mask,
    segment_reduce,
)
from marlhf.options.turn import Turn, Within
from marlhf.options.value_change import ValueChange
from marlhf.options.wrapper import MacroActionWrapper

# The syntax-aware terminations (tree-sitter, spaCy) register on import; their modules load
# grammars and pipelines lazily. Only a *missing* module is tolerated here (a trimmed install):
# a module that exists but fails to import is a bug and raises.
for _module in ("syntax", "parse"):
    if importlib.util.find_spec(f"marlhf.options.{_module}") is not None:
        importlib.import_module(f"marlhf.options.{_module}")
del _module

__all__ = [
    "REDUCTIONS",
    "Cap",
    "CutBudget",
    "Entropy",
    "EvenCuts",
    "Learned",
    "LowProbability",
    "MacroActionWrapper",
    "MaxLength",
    "MinLength",
    "NGram",
    "Perplexity",
    "Punctuation",
    "RandomCuts",
    "RandomNGram",
    "ScoredTermination",
    "SegmentationBatch",
    "SegmentationError",
    "Surprisal",
    "Termination",
    "TerminationStats",
    "Turn",
    "Union",
    "ValueChange",
    "Within",
    "available_terminations",
    "broadcast_to_tokens",
    "build_termination",
    "compute_starts",
    "lengths_to_starts",
    "make_termination",
    "num_segments",
    "parse_spec",
    "position_in_segment",
    "register_termination",
    "segment_ids",
    "segment_lengths",
    "segment_mask",
    "segment_reduce",
    "termination_config",
    "validate_starts",
]
