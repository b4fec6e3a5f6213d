"""One compose deployment of the whole system: built, started, waited for, inspected and removed.

`make docker-up` and the compose tests both use it. A deployment is a compose project: its own containers,
network and volumes, its own host ports on 127.0.0.1, and an env file that holds what it was started with.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker_local.engine import EngineUnavailableError, docker_cli, ensure_engine
from docker_local.images import REPO, broker_image, python_base
from pipeline_core.settings import PipelineSettings

logger = logging.getLogger(__name__)

COMPOSE_FILE = REPO / "docker-compose.yml"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
UP_TIMEOUT_S = 300


class DeploymentError(EngineUnavailableError):
    """A compose command failed; the message carries its output."""


@dataclass
class Deployment:
    """A compose project of docker-compose.yml on 127.0.0.1 ports, with the settings in `env_file`."""

    project: str = "kafka-image-classifier"
    env_file: Path = REPO / ".env"
    api_port: int = 8000
    sink_port: int = 8001
    kafka_port: int = 9094
    inference_replicas: int = 2
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        """The upload API and page, from the host."""
        return f"http://localhost:{self.api_port}"

    @property
    def sink_url(self) -> str:
        """The results and their SSE streams, from the host."""
        return f"http://localhost:{self.sink_port}"

    @property
    def bootstrap_servers(self) -> str:
        """The broker's listener for clients on the host."""
        return f"localhost:{self.kafka_port}"

    def pipeline_settings(self) -> PipelineSettings:
        """Settings naming this deployment's broker (from the host) and the compose file's topics and groups."""
        return PipelineSettings(kafka_bootstrap_servers=self.bootstrap_servers, _env_file=None)

    def write_env_file(self) -> None:
        """Write the variables compose reads; keep a JOB_ID_SECRET already there, else generate one."""
        existing = _read_env_file(self.env_file)
        values = (
            existing
            | {
                "API_HOST_PORT": str(self.api_port),
                "SINK_HOST_PORT": str(self.sink_port),
                "KAFKA_HOST_PORT": str(self.kafka_port),
                "INFERENCE_REPLICAS": str(self.inference_replicas),
                "RESULTS_PUBLIC_URL": self.sink_url,
                "CORS_ORIGINS": f"{self.api_url},http://127.0.0.1:{self.api_port}",
            }
            | self.settings
        )
        if not values.get("JOB_ID_SECRET") and not os.environ.get("JOB_ID_SECRET"):
            values["JOB_ID_SECRET"] = secrets.token_hex(32)
            logger.info("generated a JOB_ID_SECRET into %s", self.env_file)
        self.env_file.write_text(
            "# Written by `python -m docker_local` (make docker-up); compose reads it. Keep it out of git.\n"
            + "".join(f"{k}={v}\n" for k, v in values.items())
        )
        self.env_file.chmod(0o600)

    def compose(
        self, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker compose` for this project; `DeploymentError` with its output when it fails and `check`."""
        command = [
            docker_cli(),
            "compose",
            "--project-name",
            self.project,
            "--file",
            str(COMPOSE_FILE),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            raise DeploymentError(
                f"`docker compose {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result

    def build(self) -> None:
        """Make the base and broker images (pulled or built here), then the services' images."""
        ensure_engine()
        started = time.monotonic()
        base = python_base(os.environ.get("PYTHON_IMAGE") or None)
        kafka = os.environ.get("KAFKA_IMAGE") or broker_image(base)
        ca = os.environ.get("BUILD_CA_BUNDLE") or (
            str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.exists() else "/dev/null"
        )
        # Only the project's broker image is known to run on a read-only root file system (see docker-compose.yml).
        read_only = "false" if os.environ.get("KAFKA_IMAGE") else "true"
        self.settings = {
            "PYTHON_IMAGE": base,
            "KAFKA_IMAGE": kafka,
            "KAFKA_READ_ONLY": read_only,
            "BUILD_CA_BUNDLE": ca,
        } | self.settings
        self.write_env_file()
        logger.info("building the service images on %s (cached layers are reused)", base)
        self.compose("build", timeout_s=3600)
        logger.info("images ready in %.0f s (base %s, broker %s)", time.monotonic() - started, base, kafka)

    def up(self, timeout_s: float = UP_TIMEOUT_S) -> None:
        """Build what is missing, start every service and return once each one is healthy."""
        self.build()
        started = time.monotonic()
        self.compose(
            "up",
            "--detach",
            "--no-build",
            "--wait",
            "--wait-timeout",
            str(int(timeout_s)),
            timeout_s=timeout_s + 60,
        )
        logger.info("every service healthy after %.0f s", time.monotonic() - started)

    def down(self, *, volumes: bool = False) -> None:
        """Stop and remove the containers and the network; the volumes too when asked."""
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), timeout_s=300)

    def scale_inference(self, replicas: int, timeout_s: float = UP_TIMEOUT_S) -> None:
        """Run `replicas` inference consumers and wait until all are healthy."""
        self.inference_replicas = replicas
        self.write_env_file()
        self.compose(
            "up",
            "--detach",
            "--no-build",
            "--no-recreate",
            "--scale",
            f"inference={replicas}",
            "--wait",
            "--wait-timeout",
            str(int(timeout_s)),
            timeout_s=timeout_s + 60,
        )

    def start_profile(self, profile: str, timeout_s: float = UP_TIMEOUT_S, **settings: str) -> None:
        """Start the service a compose profile names (`shadow`, `canary`) beside the running ones, with these
        settings added to the env file, and wait until it is healthy."""
        self.settings = self.settings | settings
        self.write_env_file()
        self.compose(
            "--profile",
            profile,
            "up",
            "--detach",
            "--no-build",
            "--no-recreate",
            "--wait",
            "--wait-timeout",
            str(int(timeout_s)),
            profile,
            timeout_s=timeout_s + 60,
        )

    def stop_profile(self, profile: str) -> None:
        """Stop and remove the service of a compose profile (graceful: SIGTERM, then its stop grace period)."""
        self.compose("--profile", profile, "rm", "--stop", "--force", profile, timeout_s=300)

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """`docker inspect` of this project's containers (of one service), stopped ones included."""
        ids = self.compose("ps", "--all", "--quiet", *([service] if service else [])).stdout.split()
        if not ids:
            return []
        result = subprocess.run(
            [docker_cli(), "inspect", *ids], capture_output=True, text=True, timeout=60, check=True
        )
        inspected: list[dict[str, Any]] = json.loads(result.stdout)
        return sorted(inspected, key=lambda c: str(c["Name"]))

    def logs(self, tail: int = 200) -> str:
        """The last lines of every service's log, for a failure's message."""
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False).stdout


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values
