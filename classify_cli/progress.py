"""Progress on stderr (files uploaded, files classified) that rows printed on stdout do not tear."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no stubs


class Progress:
    """Two tqdm bars, or nothing when disabled; `emit` prints one output line either way."""

    def __init__(self, total: int, enabled: bool, out: TextIO | None = None) -> None:
        self.enabled = enabled
        self.out = out if out is not None else sys.stdout
        options = {"total": total, "unit": "file", "file": sys.stderr, "disable": not enabled}
        self.upload_bar = tqdm(desc="uploaded  ", position=0, **options)
        self.result_bar = tqdm(desc="classified", position=1, **options)

    def uploaded(self, count: int = 1) -> None:
        """Count files sent (or given up on before sending)."""
        self.upload_bar.update(count)

    def classified(self, count: int = 1) -> None:
        """Count files with an outcome."""
        self.result_bar.update(count)

    def emit(self, line: str) -> None:
        """Print a line of output, flushed at once so a pipe sees each row as it comes."""
        if self.enabled:
            tqdm.write(line, file=self.out)  # clears the bars, prints, redraws them
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        """Leave the bars as they ended."""
        self.result_bar.close()
        self.upload_bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
