"""docker_local's logic that needs no engine: the Debian mirror for the base image, and the env file."""

from __future__ import annotations

from pathlib import Path

from docker_local.deploy import Deployment
from docker_local.images import DEFAULT_MIRROR, debian_mirror


def test_the_mirror_is_read_from_deb822_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "other.sources").write_text("Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n")
    (sources / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://mirror.example/debian\n"
    )
    assert debian_mirror((sources,)) == "http://mirror.example/debian"


def test_the_mirror_is_read_from_a_one_line_entry_and_defaults_to_debians(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text("deb [arch=amd64 signed-by=/k.gpg] http://ftp.example.org/debian/ bookworm main\n")
    assert debian_mirror((listing,)) == "http://ftp.example.org/debian"
    assert debian_mirror((tmp_path / "missing",)) == DEFAULT_MIRROR


def test_the_env_file_keeps_a_secret_already_there_and_generates_one_otherwise(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("JOB_ID_SECRET", raising=False)
    env_file = tmp_path / ".env"
    Deployment(env_file=env_file, api_port=18000).write_env_file()
    first = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and line[0] != "#"
    )
    assert len(first["JOB_ID_SECRET"]) == 64 and first["API_HOST_PORT"] == "18000"
    assert env_file.stat().st_mode & 0o077 == 0, "the secret is readable by its owner only"
    env_file.write_text(env_file.read_text() + "API_KEY=kept\n")
    Deployment(env_file=env_file, api_port=18001).write_env_file()
    second = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and line[0] != "#"
    )
    assert second["JOB_ID_SECRET"] == first["JOB_ID_SECRET"] and second["API_KEY"] == "kept"
    assert second["API_HOST_PORT"] == "18001"
