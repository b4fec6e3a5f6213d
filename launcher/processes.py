"""Child processes with prefixed, coloured output, that die with their parent."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

logger = logging.getLogger(__name__)

_COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
_RESET = "\033[0m"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: if the launcher is killed outright (SIGKILL), the kernel still sends its children SIGTERM.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Service:
    """One service process of the system, its output prefixed with its name."""

    name: str
    command: list[str]
    env: Mapping[str, str]
    colour: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _pump: threading.Thread | None = field(default=None, init=False)

    def start(self, out: IO[str] = sys.stdout) -> None:
        """Start the process (in its own session, so the terminal's Ctrl-C reaches only the launcher)."""
        self.process = subprocess.Popen(
            self.command,
            env=dict(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
        )
        colour = _COLOURS[self.colour % len(_COLOURS)] if out.isatty() else ""
        prefix = f"{colour}{self.name:<12}|{_RESET if colour else ''} "
        self._pump = threading.Thread(target=_pump, args=(self.process.stdout, prefix, out), daemon=True)
        self._pump.start()

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """Ask the process to stop gracefully (SIGTERM)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the exit; kill it if it outlives `timeout_s`. Returns the exit code."""
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.process.kill()
            code = self.process.wait()
        if self._pump is not None:
            self._pump.join(timeout=2)
        return code


def _pump(stream: IO[bytes] | None, prefix: str, out: IO[str]) -> None:
    if stream is None:
        return
    for line in iter(stream.readline, b""):
        out.write(prefix + line.decode("utf-8", "replace"))
        out.flush()
    stream.close()
