"""Restarts the services of a running system that exit unexpectedly: with backoff, logged, and bounded, so a
crash loop is reported and given up on while the rest keeps serving (what compose's `restart:` does)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from launcher.system import System
from pipeline_core.retry import Backoff

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """A service that exits `max_restarts` + 1 times in a row, each time within `healthy_s` of its start, is in a
    crash loop and is given up on; a run that lasted `healthy_s` resets the count. Pauses grow from 1 s to 30 s."""

    max_restarts: int = 5
    healthy_s: float = 60.0
    backoff: Backoff = field(default_factory=lambda: Backoff(first_s=1.0, max_s=30.0))


class Supervisor:
    """Call `check()` every half second or so: it notices exits and restarts services when their pause is over."""

    def __init__(self, system: System, policy: RestartPolicy | None = None) -> None:
        self.system = system
        self.policy = policy or RestartPolicy()
        self.restarts: defaultdict[str, int] = defaultdict(int)
        self.given_up: set[str] = set()
        now = time.monotonic()
        self._started_at: defaultdict[str, float] = defaultdict(lambda: now)
        self._short_runs: defaultdict[str, int] = defaultdict(int)  # exits in a row soon after a start
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
                    self._started_at[name] = time.monotonic()
                continue
            self._on_exit(name, service.process.returncode if service.process else None, now)

    def _on_exit(self, name: str, code: int | None, now: float) -> None:
        uptime = now - self._started_at[name]
        if uptime >= self.policy.healthy_s:
            self._short_runs[name] = 0
        self._short_runs[name] += 1
        runs = self._short_runs[name]
        if runs > self.policy.max_restarts:
            self.given_up.add(name)
            logger.error(
                "%s exited with %s after %.0f s, its %d. exit in a row within %.0f s of starting: a crash loop; not "
                "restarting it (see its log above); the other services keep running",
                name,
                code,
                uptime,
                runs,
                self.policy.healthy_s,
            )
            return
        pause = self.policy.backoff.delay(runs)
        self._restart_at[name] = now + pause
        logger.warning(
            "%s exited unexpectedly with %s after %.0f s; restarting it in %.1f s", name, code, uptime, pause
        )
