"""The three ways to print rows: an aligned table, JSON lines and CSV; each row is printed as it arrives."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from classify_cli.rows import Row

Format = Literal["table", "jsonl", "csv"]
Emit = Callable[[str], None]

CSV_COLUMNS = ("file", "id", "status", "label", "score", "error")
FILE_WIDTH_MAX = 50
LABEL_WIDTH = 30  # the longest ImageNet label, American_Staffordshire_terrier, is 30 characters
SCORE_WIDTH = 6


class Writer(Protocol):
    """Prints a header (if the format has one), then one row at a time."""

    def start(self) -> None: ...

    def write(self, row: Row) -> None: ...


class JsonlWriter:
    """One JSON object per line and per file."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def start(self) -> None:
        """JSON lines have no header."""

    def write(self, row: Row) -> None:
        """Print the row as one line of JSON."""
        self.emit(json.dumps(row.as_dict(), ensure_ascii=False))


class CsvWriter:
    """A header line, then one CSV record per file (quoted by the csv module, so commas in names are safe)."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def start(self) -> None:
        """Print the header."""
        self._record(CSV_COLUMNS)

    def write(self, row: Row) -> None:
        """Print the row; an empty field stands for a missing value."""
        values = row.as_dict()
        score = values["score"]
        values["score"] = "" if score is None else f"{score:.6f}"
        self._record([("" if values[c] is None else str(values[c])) for c in CSV_COLUMNS])

    def _record(self, fields: Sequence[str]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(fields)
        self.emit(buffer.getvalue().removesuffix("\n"))


class TableWriter:
    """Aligned columns (file, label, score, status), a row per file as it arrives, top-N labels beneath."""

    def __init__(self, emit: Emit, files: Sequence[str], top: int = 1) -> None:
        self.emit = emit
        self.top = top
        # Every file name is known before the first row, so the file column is sized once for all of them.
        self.file_width = max(4, min(FILE_WIDTH_MAX, max((len(f) for f in files), default=0)))

    def start(self) -> None:
        """Print the column titles."""
        self._line("FILE", "LABEL", "SCORE", "STATUS")

    def write(self, row: Row) -> None:
        """Print the row, then (with --top N) the next labels, one per line, in the label column."""
        status = row.status if row.error is None else f"{row.status}: {row.error}"
        self._line(_fit(row.file, self.file_width), row.label or "-", _score(row.score), status)
        for extra in row.top[1 : self.top] if row.ok else []:
            self._line("", str(extra.get("label", "?")), _score(extra.get("score")), "")

    def _line(self, file: str, label: str, score: str, status: str) -> None:
        line = f"{file:<{self.file_width}}  {label:<{LABEL_WIDTH}}  {score:>{SCORE_WIDTH}}  {status}"
        self.emit(line.rstrip())


def _score(score: object) -> str:
    return f"{score:.4f}" if isinstance(score, int | float) else "-"


def _fit(text: str, width: int) -> str:
    """The text, its start replaced by an ellipsis when too long: the end of a path names the file."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def create_writer(fmt: Format, emit: Emit, files: Sequence[str], top: int = 1) -> Writer:
    """The writer for `--format`."""
    if fmt == "jsonl":
        return JsonlWriter(emit)
    if fmt == "csv":
        return CsvWriter(emit)
    return TableWriter(emit, files, top)
