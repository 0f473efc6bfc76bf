"""The helpers the multi-turn tasks share: the end-of-turn token and the turn counter's copy."""

from __future__ import annotations

import pytest

from marlhf.envs.multiturn.protocol import TextEnvError
from marlhf.envs.multiturn.tasks.common import TurnCounter, end_of_turn_token
from marlhf.tokenization import SymbolCodec


def test_end_of_turn_token_is_the_eos_or_a_named_error() -> None:
    assert end_of_turn_token("T", SymbolCodec(["a", "b"], eos="<eot>")) == 1
    with pytest.raises(ValueError, match=r"^Where: the codec has no EOS token"):
        end_of_turn_token("Where", SymbolCodec(["a", "b"], eos=None))


def test_turn_counter_copy_from_takes_turns_and_end() -> None:
    source, twin = TurnCounter("E", 2), TurnCounter("E", 2)
    source.start()
    source.advance()
    twin.copy_from(source)
    assert (twin.turn, twin.done) == (1, False)
    twin.advance()
    assert twin.finish(terminated=False) is True
    assert (source.turn, source.done) == (1, False)  # the copy is independent
    with pytest.raises(TextEnvError, match="after the episode ended"):
        twin.advance()
