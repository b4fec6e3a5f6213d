"""The upload page, read once from the package, with an optional server-side result (POST /)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from importlib.resources import files

RESULT_MARKER = "<!--server-result-->"


@dataclass(frozen=True, slots=True)
class PageResult:
    """What POST / shows: a label and score, or an error message."""

    filename: str
    label: str | None = None
    score: float | None = None
    error: str | None = None


class Page:
    """index.html from `producer_api/static`, rendered with or without a result."""

    def __init__(self) -> None:
        self._html = files("producer_api").joinpath("static/index.html").read_text(encoding="utf-8")

    def render(self, result: PageResult | None = None) -> str:
        """The page; with a result, the server-side result section filled in (values HTML-escaped)."""
        if result is None:
            return self._html
        return self._html.replace(RESULT_MARKER, _result_html(result), 1)


def _result_html(result: PageResult) -> str:
    name = escape(result.filename)
    if result.error is not None:
        body = f"<p><strong>{name}</strong>: {escape(result.error)}</p>"
        return f'<section class="server-result error" role="alert">{body}</section>'
    score = f"{result.score:.4f}" if result.score is not None else "n/a"
    label = escape(result.label or "?")
    body = f'<p><strong>{name}</strong> is <strong class="label">{label}</strong> (score {score})</p>'
    return f'<section class="server-result" role="status">{body}</section>'
