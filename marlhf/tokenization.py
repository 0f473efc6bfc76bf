"""Token codecs: the one interface between token ids and text that envs and options share.

A :class:`TokenCodec` knows the vocabulary size, the pad and EOS ids, and the raw bytes of every
token. Text-based terminations align characters to tokens through :func:`align_tokens`, which
concatenates each token's bytes; nothing is ever re-tokenised.

Alignment rule (documented once, used everywhere): a character whose UTF-8 bytes straddle two
tokens belongs to the token that holds its *last* byte, i.e. the token that completes it. A token
that completes no character (the first half of a split character) has an empty character span.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TokenCodec(Protocol):
    """What marlhf needs of a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token contributes to the decoded text (``b""`` for special tokens)."""
        ...


class SymbolCodec:
    """A codec over a small list of symbols (toy tasks): token id ``i`` is ``symbols[i]``.

    ``symbols`` must not contain the special tokens; they are added in front: id 0 is pad,
    id 1 is EOS (when ``eos`` is given). Encoding is greedy longest-match.

    :param symbols: the task's symbols, each a non-empty string, all distinct.
    :param pad: the pad token's name (id 0).
    :param eos: the EOS token's name (id 1), or ``None`` for a task without EOS.
    """

    def __init__(self, symbols: Sequence[str], pad: str = "<pad>", eos: str | None = "<eos>"):
        specials = [pad] + ([eos] if eos is not None else [])
        if not symbols:
            raise ValueError("SymbolCodec: `symbols` must be non-empty")
        for s in symbols:
            if not isinstance(s, str) or not s:
                raise ValueError(f"SymbolCodec: every symbol must be a non-empty str, got {s!r}")
        if len(set(symbols)) != len(symbols):
            raise ValueError("SymbolCodec: `symbols` must be distinct")
        clash = set(symbols) & set(specials)
        if clash:
            raise ValueError(f"SymbolCodec: symbols {sorted(clash)} clash with special tokens")
        self.tokens: list[str] = specials + list(symbols)
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._special = set(range(len(specials)))
        self._eos = 1 if eos is not None else None
        self._max_len = max(len(s) for s in symbols)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def pad_token_id(self) -> int:
        return 0

    @property
    def eos_token_id(self) -> int | None:
        return self._eos

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            for n in range(min(self._max_len, len(text) - i), 0, -1):
                tid = self._ids.get(text[i : i + n])
                if tid is not None and tid not in self._special:
                    ids.append(tid)
                    i += n
                    break
            else:
                raise ValueError(
                    f"SymbolCodec.encode: no symbol matches {text[i : i + 8]!r} at character {i}"
                )
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self.tokens):
            raise ValueError(f"SymbolCodec: token id {token_id} outside [0, {len(self.tokens)})")
        return b"" if token_id in self._special else self.tokens[token_id].encode()

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def symbol(self, token_id: int) -> str:
        """The token's name, special tokens included (for display)."""
        return self.tokens[token_id]


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table, rebuilt from its definition.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class HFCodec:
    """Adapts a ``transformers`` tokenizer (byte-level BPE or SentencePiece style).

    Token bytes come from the tokenizer's own token strings: byte-level BPE strings are mapped
    back through the byte table, SentencePiece strings turn ``▁`` into a space and ``<0xNN>``
    byte-fallback pieces into their byte.

    :param tokenizer: a ``PreTrainedTokenizerBase``; it must have a pad token (set one first,
        e.g. ``tokenizer.pad_token = tokenizer.eos_token``).
    """

    def __init__(self, tokenizer: Any):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "HFCodec: the tokenizer has no pad token; set `tokenizer.pad_token` "
                "(for example to its EOS token) before building the codec"
            )
        self.tokenizer = tokenizer
        self._vocab_size = len(tokenizer)
        self._special = set(tokenizer.all_special_ids)
        pieces = tokenizer.convert_ids_to_tokens(list(range(self._vocab_size)))
        table = _byte_level_decoder()
        byte_level = all(p is None or all(c in table for c in p) for p in pieces[:2000])
        self._bytes: list[bytes] = []
        for tid, piece in enumerate(pieces):
            if piece is None or tid in self._special:
                self._bytes.append(b"")
            elif byte_level and all(c in table for c in piece):
                self._bytes.append(bytes(table[c] for c in piece))
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                self._bytes.append(bytes([int(piece[3:5], 16)]))
            else:
                self._bytes.append(piece.replace("▁", " ").encode())

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return None if eos is None else int(eos)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self._vocab_size:
            raise ValueError(f"HFCodec: token id {token_id} outside [0, {self._vocab_size})")
        return self._bytes[token_id]


@dataclass(frozen=True)
class TokenAlignment:
    """Decoded text of a token sequence and each token's character span ``[start, end)``."""

    text: str
    starts: list[int]
    ends: list[int]

    def token_at_char(self, char: int) -> int:
        """Index of the token whose span holds character ``char`` (tokens with empty spans
        are skipped: the character belongs to the token that completed it)."""
        if not 0 <= char < len(self.text):
            raise ValueError(f"char {char} outside the text of length {len(self.text)}")
        lo, hi = 0, len(self.ends) - 1
        while lo < hi:  # first token whose end is past `char`
            mid = (lo + hi) // 2
            if self.ends[mid] > char:
                hi = mid
            else:
                lo = mid + 1
        return lo


def align_tokens(codec: TokenCodec, ids: Sequence[int]) -> TokenAlignment:
    """Decode ``ids`` and give every token its character span, from the tokens' own bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for k, tid in enumerate(ids):
        piece = decoder.decode(codec.token_bytes(int(tid)), final=k == len(ids) - 1)
        starts.append(pos)
        pos += len(piece)
        ends.append(pos)
        parts.append(piece)
    return TokenAlignment("".join(parts), starts, ends)


def tokenized_batches(
    tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int, device: Any
) -> Iterator[Any]:
    """``texts`` through a ``transformers`` tokenizer in slices of ``batch_size``: each slice
    padded, truncated to ``max_length`` tokens, as tensors on ``device``."""
    for i in range(0, len(texts), batch_size):
        yield tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
