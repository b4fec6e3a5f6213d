"""`python -m launcher.settings_doc`: write docs/settings.md, the table of every setting, from the classes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"

# (title, "module:Class"): each section lists the fields the class adds to its base.
SECTIONS = [
    ("Every service: Kafka, topics, limits", "pipeline_core.settings:PipelineSettings"),
    ("Web services (API and sink): access and job ids", "pipeline_core.settings:WebSettings"),
    ("producer_api", "producer_api.settings:ApiSettings"),
    ("inference_consumer", "inference_consumer.settings:ConsumerSettings"),
    ("results_sink", "results_sink.settings:SinkSettings"),
    ("make run (launcher)", "launcher.settings:LauncherSettings"),
]

HEADER = """# Settings

Every service reads its settings from environment variables (the upper-case names below) and from an optional
`.env` file in the working directory; environment variables win. Values are checked at start-up: a bad one
stops the service with a message naming the setting. List values take JSON (`["a","b"]`) or a comma-separated
string. Secrets are never logged.

This file is generated from the settings classes by `python -m launcher.settings_doc`; a test fails when it
is out of date.
"""


def _load(path: str) -> type[BaseSettings]:
    module, _, name = path.partition(":")
    cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
    return cls


def _default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, SecretStr):
        return "(a development value; set your own)"
    if value is None:
        return "unset"
    if isinstance(value, Path) and value.is_absolute():
        value = str(value).replace(str(Path.home()), "~")
    return f"`{value}`"


def _type(field: Any) -> str:
    text = str(field.annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    text = text.replace("<class '", "").replace("'>", "").replace("NoneType", "None")
    return text.replace("|", "\\|")


def render() -> str:
    """The whole settings page as Markdown."""
    parts = [HEADER]
    for title, path in SECTIONS:
        cls = _load(path)
        inherited: set[str] = set()
        for base in cls.__mro__[1:]:
            inherited |= set(getattr(base, "model_fields", {}))
        rows = [
            f"| `{name.upper()}` | {_type(f)} | {_default(f)} | {(f.description or '').replace('|', '/')} |"
            for name, f in cls.model_fields.items()
            if name not in inherited
        ]
        parts.append(f"\n## {title}\n\n| variable | type | default | meaning |\n|---|---|---|---|\n")
        parts.append("\n".join(rows) + "\n")
    return "".join(parts)


def main() -> int:
    """Write the page, or with `--check` exit 1 when the committed page differs."""
    text = render()
    if "--check" in sys.argv:
        return 0 if DOC.read_text() == text else 1
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
