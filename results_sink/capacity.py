"""How many SSE streams are open, in all and per client, so one client cannot take every stream there is."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from fastapi import HTTPException, Request

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def client_key(request: Request) -> str:
    """Who opens a stream: the peer's address (behind a proxy, the one uvicorn trusts in X-Forwarded-For).

    Not the API key: the system has one key, which every client that has it sends, so counting by key would
    count everyone together.
    """
    return request.client.host if request.client else "unknown"


class StreamSlots:
    """Admits a stream while fewer than `total_limit` are open and its client has fewer than `per_client_limit`.

    A stream counts from the moment it is admitted, before its response starts, so a burst of requests is
    counted as it arrives. Used on the event loop only.
    """

    def __init__(self, total_limit: int, per_client_limit: int) -> None:
        self.total_limit = total_limit
        self.per_client_limit = per_client_limit
        self._open: Counter[str] = Counter()
        self.total = 0

    def open_for(self, client: str) -> int:
        """How many streams `client` has open."""
        return self._open[client]

    def acquire(self, client: str) -> Callable[[], None]:
        """Count one more stream for `client` and return its release (idempotent); HTTPException if full."""
        if self.total >= self.total_limit:
            raise HTTPException(
                503,
                detail=f"{self.total} live streams, the most this instance serves; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if self._open[client] >= self.per_client_limit:
            logger.info("refused a stream to %s: %d open, the most per client", client, self._open[client])
            raise HTTPException(
                429,
                detail=f"this client has {self._open[client]} live streams, the most one client may open; "
                "close one (a stream can watch several jobs: /v1/events?ids=a,b) or retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._open[client] += 1
        self.total += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.total -= 1
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]  # the table holds only clients with a stream open

        return release
