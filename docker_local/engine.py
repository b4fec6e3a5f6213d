"""A Docker engine and Docker Compose v2 to talk to, set up here when missing and possible.

Our machines have no systemd and no image registry. When no engine answers and we are root, Debian's
`docker.io` is installed (if missing) and `dockerd` is started in the background; when `docker compose` is not
there, Compose v2 is built from the Go module proxy (about 2 minutes on 2 cores, once) and installed as the
CLI plugin. Anything else (not root, no Go) is an `EngineUnavailableError` that says what to install.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline_core.errors import PipelineError

logger = logging.getLogger(__name__)

COMPOSE_MODULE = "github.com/docker/compose/v2/cmd"
COMPOSE_VERSION = "v2.32.4"
CLI_PLUGINS = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "cli-plugins"
DOCKERD_LOG = Path("/var/log/dockerd.log")
ENGINE_START_TIMEOUT_S = 60.0


class EngineUnavailableError(PipelineError):
    """No Docker engine or Compose v2, and none can be set up here; the message says what is missing."""


def docker_cli() -> str:
    """The `docker` client on PATH."""
    found = shutil.which("docker")
    if found is None:
        raise EngineUnavailableError(
            "no `docker` client on PATH: install Docker (Debian: apt-get install docker.io)"
        )
    return found


def engine_answers(timeout_s: float = 10.0) -> bool:
    """Whether a Docker engine answers `docker info`."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            [docker_cli(), "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def ensure_engine(*, start: bool = True, compose: bool = True) -> None:
    """Return once an engine answers (and `docker compose` works, if `compose`): set them up here if allowed."""
    if not engine_answers():
        if not start:
            raise EngineUnavailableError("no Docker engine answers `docker info`")
        _start_dockerd()
    if compose:
        ensure_compose()


def _start_dockerd() -> None:
    if os.geteuid() != 0:
        raise EngineUnavailableError(
            "no Docker engine answers, and starting one needs root: start dockerd (or Docker Desktop) first"
        )
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        apt_install("docker.io")
    logger.info("starting dockerd in the background (log: %s)", DOCKERD_LOG)
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with DOCKERD_LOG.open("ab") as log:
        # `setsid --fork`: dockerd runs on in a session of its own (the engine is the machine's, not this
        # command's), and the process we start exits at once, so nothing is left for us to wait on.
        subprocess.run(
            [shutil.which("setsid") or "setsid", "--fork", shutil.which("dockerd") or "dockerd"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=True,
        )
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(0.5)
    raise EngineUnavailableError(
        f"dockerd did not answer within {ENGINE_START_TIMEOUT_S:.0f} s: see {DOCKERD_LOG}"
    )


def compose_works() -> bool:
    """Whether `docker compose` (the v2 plugin) runs."""
    result = subprocess.run(
        [docker_cli(), "compose", "version", "--short"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def ensure_compose() -> None:
    """Install the Compose v2 CLI plugin, built with Go from the module proxy, when `docker compose` fails."""
    if compose_works():
        return
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise EngineUnavailableError(
            "`docker compose` (Compose v2) is missing, and building it needs Go: install the docker-compose "
            "plugin, or Go (apt-get install golang-go)"
        )
    logger.info("building Docker Compose %s with Go (once, about 2 minutes)", COMPOSE_VERSION)
    gobin = Path.home() / ".cache" / "kafka-image-classifier" / f"compose-{COMPOSE_VERSION}"
    result = subprocess.run(
        [go, "install", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
        env=os.environ | {"GOBIN": str(gobin), "CGO_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if result.returncode != 0:
        raise EngineUnavailableError(f"building Docker Compose failed:\n{result.stderr[-2000:]}")
    CLI_PLUGINS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(gobin / "cmd", CLI_PLUGINS / "docker-compose")
    if not compose_works():
        raise EngineUnavailableError(
            f"Docker Compose was built into {CLI_PLUGINS} but `docker compose` fails"
        )


def apt_install(*packages: str) -> None:
    """Install Debian packages (as root), or `EngineUnavailableError` naming them."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailableError(f"these Debian packages are needed: {' '.join(packages)}")
    logger.info("installing %s with apt-get", " ".join(packages))
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(
            command,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            raise EngineUnavailableError(f"`{' '.join(command)}` failed:\n{result.stderr[-2000:]}")
