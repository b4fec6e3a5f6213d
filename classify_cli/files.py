"""Which files to classify: the paths given, folders expanded to their images, `-` read from stdin."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
STDIN_MARKER = "-"


@dataclass(slots=True)
class Discovery:
    """The files found, in order, and the paths that could not be used, with why."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def is_image_name(path: Path) -> bool:
    """True when the file name ends with an image extension, in any case."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_path_list(stream: TextIO) -> list[str]:
    """One path per line; blank lines are skipped, surrounding whitespace is not part of a path."""
    return [line.strip() for line in stream if line.strip()]


def expand_stdin(args: Iterable[str], stdin: TextIO) -> list[str]:
    """The arguments with `-` replaced by the paths listed on stdin (read once, however often `-` appears)."""
    expanded: list[str] = []
    listed: list[str] | None = None
    for arg in args:
        if arg != STDIN_MARKER:
            expanded.append(arg)
        elif listed is None:
            listed = read_path_list(stdin)
            expanded.extend(listed)
    return expanded


def folder_images(folder: Path, recursive: bool) -> Iterator[Path]:
    """The images in a folder, sorted by name; hidden files and folders (`.git`, `._*`) are skipped."""
    for root, dirs, names in os.walk(folder, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(names):
            path = Path(root, name)
            if not name.startswith(".") and is_image_name(path) and path.is_file():
                yield path


def _raise(error: OSError) -> None:
    # os.walk ignores errors by default; an unreadable folder the user named should be said, not skipped.
    raise error


def discover(args: Iterable[str], recursive: bool, stdin: TextIO) -> Discovery:
    """Expand the arguments into image files (each once, in the order given) and problems to report."""
    found = Discovery()
    seen: set[Path] = set()
    for arg in expand_stdin(args, stdin):
        path = Path(arg).expanduser()
        try:
            candidates = list(folder_images(path, recursive)) if path.is_dir() else [path]
        except OSError as e:
            found.problems.append((arg, f"cannot list folder: {e.strerror or e}"))
            continue
        if not path.is_dir() and not path.exists():
            found.problems.append((arg, "no such file or directory"))
            continue
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:  # a file named twice (or via two folders) is classified once
                seen.add(key)
                found.files.append(candidate)
    return found
