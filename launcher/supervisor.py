"""Restarts the services of a running system that exit unexpectedly: with backoff, logged, and bounded, so a
crash loop is reported and given up on while the rest keeps serving (what compose's `restart:` does)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from launcher.system import System
from pipeline_core.retry import Backoff

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """At most `max_restarts` restarts of one service within `window_s`; pauses growing from 1 s to 30 s."""

    max_restarts: int = 5
    window_s: float = 120.0
    backoff: Backoff = field(default_factory=lambda: Backoff(first_s=1.0, max_s=30.0))


class Supervisor:
    """Call `check()` every half second or so: it notices exits and restarts services when their pause is over."""

    def __init__(self, system: System, policy: RestartPolicy | None = None) -> None:
        self.system = system
        self.policy = policy or RestartPolicy()
        self.restarts: defaultdict[str, int] = defaultdict(int)
        self.given_up: set[str] = set()
        self._exits: defaultdict[str, deque[float]] = defaultdict(deque)
        self._restart_at: dict[str, float] = {}

    def check(self) -> None:
        """One pass over the services."""
        now = time.monotonic()
        for name, service in list(self.system.services.items()):
            if name in self.given_up or service.running:
                continue
            if name in self._restart_at:
                if now >= self._restart_at[name]:
                    del self._restart_at[name]
                    self.restarts[name] += 1
                    logger.info("restarting %s (restart %d)", name, self.restarts[name])
                    self.system.start_service(name)
                continue
            self._on_exit(name, service.process.returncode if service.process else None, now)

    def _on_exit(self, name: str, code: int | None, now: float) -> None:
        exits = self._exits[name]
        exits.append(now)
        while exits and now - exits[0] > self.policy.window_s:
            exits.popleft()
        if len(exits) > self.policy.max_restarts:
            self.given_up.add(name)
            logger.error(
                "%s exited with %s, its %d. exit within %.0f s: crash loop; not restarting it (see its log above); "
                "the other services keep running",
                name,
                code,
                len(exits),
                self.policy.window_s,
            )
            return
        pause = self.policy.backoff.delay(len(exits))
        self._restart_at[name] = now + pause
        logger.warning("%s exited unexpectedly with %s; restarting it in %.1f s", name, code, pause)
