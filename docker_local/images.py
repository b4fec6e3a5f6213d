"""The images the deployment runs, made here when they cannot be pulled.

- The services' base: `python:3.11-slim` when it is present or can be pulled; else an equivalent Debian bookworm
  with Python 3.11, built with `debootstrap --variant=minbase` from the machine's own Debian mirror and
  `docker import`ed (about 1.5 minutes, once).
- The broker: `docker/kafka.Dockerfile` on that base, from the same Maven jars as `kafka_local`, tagged with a
  digest of everything it is made of, so a changed entrypoint or Kafka version is rebuilt and an unchanged one
  never is.
- The services themselves are built by `docker compose build` (docker-compose.yml, with the base as the build
  argument `PYTHON_IMAGE` and the host's CA bundle as the build secret `ca`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from docker_local.engine import EngineUnavailableError, apt_install, docker_cli
from kafka_local.broker import KAFKA_VERSION, ensure_jars

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_PYTHON = "python:3.11-slim"
LOCAL_PYTHON = "kafka-image-classifier/python-base:3.11-bookworm"
BROKER_REPOSITORY = "kafka-image-classifier/kafka"
BROKER_DOCKERFILE = REPO / "docker" / "kafka.Dockerfile"
DEBIAN_SUITE = "bookworm"  # python:3.11-slim's Debian, whose python3 is 3.11
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the services' images need of a base beyond minbase: Python with venv and pip, and CA certificates.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
PULL_TIMEOUT_S = 120.0


def image_exists(name: str) -> bool:
    """Whether the engine has an image of this name."""
    result = subprocess.run(
        [docker_cli(), "image", "inspect", name], capture_output=True, text=True, timeout=30, check=False
    )
    return result.returncode == 0


def pulled(name: str) -> bool:
    """Pull an image; False (quietly) when no registry answers, as on our machines."""
    try:
        result = subprocess.run(
            [docker_cli(), "pull", "--quiet", name],
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    if result.returncode != 0:
        logger.info("cannot pull %s: %s", name, result.stderr.strip().splitlines()[-1:] or "no reason given")
    return result.returncode == 0


def python_base(requested: str | None = None) -> str:
    """The base image for the services' builds: the one asked for, else the official one, else a local one."""
    if requested:
        if not image_exists(requested) and not pulled(requested):
            raise EngineUnavailableError(f"PYTHON_IMAGE={requested} is neither here nor pullable")
        return requested
    if image_exists(OFFICIAL_PYTHON) or pulled(OFFICIAL_PYTHON):
        return OFFICIAL_PYTHON
    if not image_exists(LOCAL_PYTHON):
        build_local_python()
    return LOCAL_PYTHON


def debian_mirror(
    sources: tuple[Path, ...] = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list")),
) -> str:
    """The Debian mirror this machine's apt uses (a deb822 `URIs:` or a one-line `deb` entry), else deb.debian.org."""
    for source in sources:
        files = (
            sorted(source.glob("*.sources")) + sorted(source.glob("*.list")) if source.is_dir() else [source]
        )
        for file in files:
            if not file.is_file():
                continue
            for line in file.read_text(errors="replace").splitlines():
                match = re.match(r"\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?(?:\s|$)", line)
                if match:
                    return match.group(1)
    return DEFAULT_MIRROR


def build_local_python(name: str = LOCAL_PYTHON) -> None:
    """A python:3.11-slim stand-in: Debian bookworm minbase with Python 3.11, from the local Debian mirror."""
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    mirror = debian_mirror()
    started = time.monotonic()
    logger.info("building the base image %s with debootstrap from %s (once, about 1.5 minutes)", name, mirror)
    with tempfile.TemporaryDirectory(prefix="python-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        result = subprocess.run(
            [
                shutil.which("debootstrap") or "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if result.returncode != 0:
            raise EngineUnavailableError(
                f"debootstrap failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}"
            )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)  # noqa: S607
        imported = subprocess.run(
            [
                docker_cli(),
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                "-",
                name,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise EngineUnavailableError(f"docker import of the base image failed: {imported.stderr}")
    logger.info("base image %s built in %.0f s", name, time.monotonic() - started)


def broker_image(base: str) -> str:
    """The project's broker image on `base`, built if this exact one (by its inputs' digest) is missing."""
    jars = ensure_jars()
    entrypoint = resources.files("kafka_local") / "container.py"
    log4j = resources.files("kafka_local") / "log4j2.yaml"
    digest = hashlib.sha256()
    for part in (KAFKA_VERSION, base, _image_id(base)):
        digest.update(part.encode())
    for path in (BROKER_DOCKERFILE, Path(str(entrypoint)), Path(str(log4j)), *sorted(jars.glob("*.jar"))):
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.suffix != ".jar" else str(path.stat().st_size).encode())
    name = f"{BROKER_REPOSITORY}:{KAFKA_VERSION}-{digest.hexdigest()[:12]}"
    if image_exists(name):
        return name
    started = time.monotonic()
    logger.info("building the broker image %s from the Kafka %s jars", name, KAFKA_VERSION)
    with tempfile.TemporaryDirectory(prefix="kafka-image-") as tmp:
        context = Path(tmp)
        shutil.copytree(jars, context / "libs", ignore=shutil.ignore_patterns(".*"))
        shutil.copyfile(str(entrypoint), context / "container.py")
        shutil.copyfile(str(log4j), context / "log4j2.yaml")
        result = subprocess.run(
            [
                docker_cli(),
                "build",
                "--quiet",
                "--build-arg",
                f"PYTHON_IMAGE={base}",
                "--file",
                str(BROKER_DOCKERFILE),
                "--tag",
                name,
                "--tag",
                f"{BROKER_REPOSITORY}:{KAFKA_VERSION}",
                str(context),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    if result.returncode != 0:
        raise EngineUnavailableError(f"building the broker image failed:\n{result.stderr[-3000:]}")
    logger.info("broker image built in %.0f s", time.monotonic() - started)
    return name


def _image_id(name: str) -> str:
    result = subprocess.run(
        [docker_cli(), "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip()
