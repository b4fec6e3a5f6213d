"""One output row per file: what happened to it, whichever way it ended (classified, failed, timed out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["done", "failed", "timeout"]


@dataclass(frozen=True, slots=True)
class Row:
    """The outcome for one file; `top` holds the service's top labels as it sent them."""

    file: str
    id: str | None
    status: Status
    label: str | None = None
    score: float | None = None
    top: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was classified."""
        return self.status == "done"

    def as_dict(self) -> dict[str, Any]:
        """The row as the JSON-lines format prints it."""
        return {
            "file": self.file,
            "id": self.id,
            "status": self.status,
            "label": self.label,
            "score": self.score,
            "top": self.top,
            "error": self.error,
        }

    @classmethod
    def from_result(cls, file: str, body: dict[str, Any]) -> Row:
        """A row from the results service's JSON (`status` done or failed)."""
        done = body.get("status") == "done"
        score = body.get("score")
        return cls(
            file=file,
            id=body.get("id"),
            status="done" if done else "failed",
            label=body.get("label"),
            score=float(score) if isinstance(score, int | float) else None,
            top=list(body.get("top") or []),
            error=None if done else str(body.get("error") or "classification failed"),
        )

    @classmethod
    def failed(cls, file: str, error: str, job_id: str | None = None) -> Row:
        """A file that never got a result (unreadable, refused by the API)."""
        return cls(file=file, id=job_id, status="failed", error=error)

    @classmethod
    def timed_out(cls, file: str, job_id: str, timeout_s: float) -> Row:
        """A job whose result did not arrive in time."""
        return cls(file=file, id=job_id, status="timeout", error=f"no result within {timeout_s:g} s")
