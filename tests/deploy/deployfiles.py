"""The files under test (docker-compose.yml, docker/*.Dockerfile), parsed, and helpers for the deploy tests.

Docker cannot run on our machines or in CI, so these tests check the files with real parsers and linters.
A missing tool fails the test with the command that installs it; nothing is skipped.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER_DIR = REPO / "docker"
HADOLINT_CONFIG = DOCKER_DIR / ".hadolint.yaml"
COMPOSE_LOADER_SRC = Path(__file__).resolve().parent / "composeload"

# Service name in docker-compose.yml -> its Dockerfile.
DOCKERFILES = {
    "api": DOCKER_DIR / "api.Dockerfile",
    "sink": DOCKER_DIR / "sink.Dockerfile",
    "inference": DOCKER_DIR / "inference.Dockerfile",
}
WEB_SERVICES = ("api", "sink")
# The project's broker image (Apache Kafka from the Maven jars); not a Python service, so only linted here.
BROKER_DOCKERFILE = DOCKER_DIR / "kafka.Dockerfile"

ComposeLoad = Callable[..., subprocess.CompletedProcess[str]]


def missing_tool(how_to_install: str) -> NoReturn:
    """Fail (never skip) when a test tool is missing, saying how to get it."""
    pytest.fail(f"missing test tool: {how_to_install}", pytrace=False)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, as dockerfile-parse reads it."""

    name: str
    value: str
    line: int


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile, split into build stages (the last one is the image that runs)."""

    path: Path
    global_args: list[Instruction]
    stages: list[list[Instruction]]
    final_env: dict[str, str]

    @property
    def final(self) -> list[Instruction]:
        return self.stages[-1]

    def all(self, name: str) -> list[Instruction]:
        return [i for stage in self.stages for i in stage if i.name == name]

    def final_all(self, name: str) -> list[Instruction]:
        return [i for i in self.final if i.name == name]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse with dockerfile-parse; ENV is its own reading of the final stage (`ENV a=1 \\ b=2` included)."""
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        missing_tool(
            "dockerfile-parse: .venv/bin/pip install 'dockerfile-parse==2.0.1' (make test installs it)"
        )
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    global_args: list[Instruction] = []
    stages: list[list[Instruction]] = []
    for item in parser.structure:
        instruction = Instruction(item["instruction"], item["value"], item["startline"] + 1)
        if instruction.name == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
        elif instruction.name == "ARG":
            global_args.append(instruction)
    return Dockerfile(path, global_args, stages, dict(parser.envs))


def compose_project(load: ComposeLoad, env: dict[str, str], *profiles: str) -> dict[str, Any]:
    """The project as compose-go resolves it; fails on any error or warning it prints."""
    result = load(env, *profiles)
    assert result.returncode == 0, f"compose-go refused docker-compose.yml:\n{result.stderr}"
    assert result.stderr == "", f"compose-go warned about docker-compose.yml:\n{result.stderr}"
    project: dict[str, Any] = json.loads(result.stdout)
    return project
