"""The docs that are generated from code are up to date."""

from __future__ import annotations

from launcher.settings_doc import DOC, render


def test_settings_page_matches_the_settings_classes() -> None:
    assert DOC.read_text() == render(), "docs/settings.md is stale: run `python -m launcher.settings_doc`"
