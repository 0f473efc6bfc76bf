"""File helpers: JSON-lines reading with line-numbered errors, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """An input data file that is missing, unreadable or malformed."""


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path``, with a clear error when it is missing or unreadable."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {str(p)!r} does not exist")
    if not p.is_file():
        raise DataError(f"data path {str(p)!r} is not a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data file {str(p)!r} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise DataError(f"data file {str(p)!r} cannot be read: {err}") from None


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; blank lines are skipped.

    :param path: the file.
    :param required: fields every record must have, each a string.
    :raises DataError: naming the file and the 1-based line of the first bad record.
    """
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: malformed JSON line: {err.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        for name in required:
            if name not in record:
                raise DataError(
                    f"{path}:{lineno}: missing field {name!r} (has {sorted(record)}); "
                    f"required: {list(required)}"
                )
            if not isinstance(record[name], str):
                raise DataError(f"{path}:{lineno}: field {name!r} must be a string")
        records.append(record)
    return records


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``.

    A reader never sees a half-written file: either the old one, or the complete new one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """:func:`atomic_write_text` of ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically write ``records`` as JSON lines."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def check_output_dir(output_dir: str | Path, marker: str) -> Path:
    """Refuse to overwrite a non-empty folder unless it holds ``marker`` (our own earlier result).

    :param output_dir: where a command will publish its result folder.
    :param marker: the result file a finished run of that command writes last.
    """
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise FileExistsError(
            f"output_dir {str(out)!r} exists and is not an earlier result (no {marker}); "
            "choose another folder or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` to build a result in before :func:`publish_dir`."""
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def publish_dir(staged: Path, out: Path) -> None:
    """Move the finished ``staged`` folder to ``out`` (replacing an earlier result)."""
    if out.exists():
        shutil.rmtree(out)
    staged.replace(out)


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Build a result in a fresh staging folder beside ``out``: moved to ``out`` when the block
    ends without error, removed when it raises (an earlier result at ``out`` stays intact)."""
    work = staging_dir(out)
    try:
        yield work
        publish_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
