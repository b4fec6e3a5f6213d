"""The lock files, requirements/*.lock: check them against pyproject.toml, and audit them for known vulnerabilities.

    python scripts/locks.py check requirements/*.lock     # what `make check` runs; no network
    python scripts/locks.py audit [--strict] requirements/*.lock   # what `make audit` runs; asks PyPI

`check` fails when a lock no longer covers pyproject.toml (a requirement added or its bounds changed without
`make lock`), or when two locks pin one package differently. Each lock names its extras in its own first lines
(uv writes the compile command there), so this file keeps no list of them.

`audit` runs pip-audit on the locks (`--disable-pip --require-hashes`: the pins as written, no venv, no resolver).
pip-audit asks PyPI's JSON API about each pinned release (`/pypi/NAME/VERSION/json`). Where that endpoint does not
answer (our machines reach PyPI through a proxy that serves 404 for it), pip-audit skips every package and still
exits 0: a silent pass. So each package it skips is looked up in the project's JSON (`/pypi/NAME/json`), whose
`vulnerabilities` are those of the project's latest release: exact for a pin that is the latest release. A pin
behind the latest release that pip-audit skipped is reported as unaudited, which fails only with --strict. Any
known vulnerability found either way fails.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
PROJECT_JSON = "https://pypi.org/pypi/{}/json"


def read_pins(lock: Path) -> dict[str, str]:
    """name (canonical) -> pinned version, from one lock file."""
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text())}


def all_pins(locks: Iterable[Path]) -> dict[str, str]:
    """The pins of several locks, which must agree (the service locks are compiled with -c requirements/dev.lock)."""
    pins: dict[str, str] = {}
    for lock in locks:
        for name, version in read_pins(lock).items():
            if pins.setdefault(name, version) != version:
                raise SystemExit(
                    f"error: {name} is pinned to {pins[name]} in one lock and {version} in {lock}"
                )
    return pins


def lock_extras(lock: Path) -> list[str]:
    """The extras a lock was compiled for, read from the command uv wrote at its top."""
    for line in lock.read_text().splitlines()[:5]:
        command = line.lstrip("#").split()
        if command[:3] == ["uv", "pip", "compile"]:
            words = shlex.split(line.lstrip("#"))
            return [words[i + 1] for i, word in enumerate(words) if word == "--extra"]
    raise SystemExit(f"error: {lock} does not start with the `uv pip compile` command that made it")


def project_requirements(pyproject: dict[str, Any], extras: Iterable[str]) -> list[Requirement]:
    """The project's own requirements plus those of the extras, following extras that name the project itself."""
    project = pyproject["project"]
    name = canonicalize_name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found = [Requirement(r) for r in project.get("dependencies", [])]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"error: pyproject.toml has no extra {extra!r}")
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == name:
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def stale_requirements(requirements: Iterable[Requirement], pins: dict[str, str]) -> list[str]:
    """The requirements (for this interpreter's platform) that the pins leave out or do not satisfy."""
    problems = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement} is pinned to {pinned}")
    return problems


def check(locks: Sequence[Path]) -> int:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    all_pins(locks)
    failed = False
    for lock in locks:
        extras = lock_extras(lock)
        for problem in stale_requirements(project_requirements(pyproject, extras), read_pins(lock)):
            print(f"{lock}: {problem}", file=sys.stderr)
            failed = True
    if failed:
        print(
            "error: the locks are behind pyproject.toml: run `make lock`, commit requirements/",
            file=sys.stderr,
        )
        return 1
    print(f"{len(locks)} locks cover pyproject.toml")
    return 0


@dataclass(frozen=True)
class Finding:
    name: str
    version: str
    vuln_id: str
    fixed_in: tuple[str, ...]
    source: str


@dataclass
class Audit:
    findings: list[Finding] = field(default_factory=list)
    by_pip_audit: int = 0
    by_latest_release: int = 0
    unaudited: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)


# name -> (latest version, that release's vulnerabilities as PyPI lists them)
LatestLookup = Callable[[str], tuple[str, list[dict[str, Any]]]]


def latest_release(name: str) -> tuple[str, list[dict[str, Any]]]:
    """The project's latest version and the vulnerabilities PyPI lists for it (withdrawn ones left out)."""
    with urllib.request.urlopen(PROJECT_JSON.format(name), timeout=30) as response:  # noqa: S310 (a fixed https URL)
        project = json.load(response)
    vulns = [v for v in project.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return str(project["info"]["version"]), vulns


def run_pip_audit(locks: Sequence[Path]) -> list[dict[str, Any]]:
    """pip-audit's JSON report on the locks: one entry per package, with `vulns` or a `skip_reason`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "pip-audit.json"
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--disable-pip",
            "--require-hashes",
            "--progress-spinner=off",
        ]
        command += ["--format=json", f"--output={report}"]
        for lock in locks:
            command += ["--requirement", str(lock)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        # 0: nothing found, 1: vulnerabilities found (the report is written) or an error (it is not).
        if result.returncode not in (0, 1) or not report.exists():
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"error: pip-audit failed (exit {result.returncode})")
        dependencies: list[dict[str, Any]] = json.loads(report.read_text())["dependencies"]
    return dependencies


def audit(pins: dict[str, str], report: list[dict[str, Any]], lookup: LatestLookup) -> Audit:
    """Combine pip-audit's report with PyPI's latest-release data for each package pip-audit skipped."""
    result = Audit()
    skipped: list[str] = []
    for dependency in report:
        name = canonicalize_name(dependency["name"])
        if "skip_reason" in dependency:
            skipped.append(name)
            result.skip_reasons.append(dependency["skip_reason"])
            continue
        result.by_pip_audit += 1
        for vuln in dependency.get("vulns", []):
            fixed = tuple(vuln.get("fix_versions", []))
            result.findings.append(Finding(name, dependency["version"], vuln["id"], fixed, "pip-audit"))
    missing = sorted(set(pins) - {canonicalize_name(d["name"]) for d in report})
    if missing:
        raise SystemExit(f"error: pip-audit reported nothing on {', '.join(missing)}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        latest = dict(zip(skipped, pool.map(lookup, skipped), strict=True))
    for package in skipped:
        version, vulns = latest[package]
        if Version(version) != Version(pins[package]):
            result.unaudited.append(f"{package} {pins[package]} (latest {version})")
            continue
        result.by_latest_release += 1
        seen: set[str] = set()  # PyPI lists one advisory under each of its ids (PYSEC-..., GHSA-...)
        for vuln in vulns:
            ids = {vuln["id"], *(vuln.get("aliases") or [])}
            if ids & seen:
                continue
            seen |= ids
            fixed = tuple(vuln.get("fixed_in") or [])
            result.findings.append(Finding(package, pins[package], vuln["id"], fixed, "PyPI, latest release"))
    return result


def print_audit(result: Audit, pins: dict[str, str]) -> None:
    print(f"{len(pins)} pinned packages")
    print(f"  audited by pip-audit (PyPI's data on each pinned release): {result.by_pip_audit}")
    if result.skip_reasons:
        print(f"  skipped by pip-audit: {len(result.skip_reasons)}, e.g. {result.skip_reasons[0]!r}")
        print(
            f"  audited on PyPI's data on the latest release (the pin is that release): {result.by_latest_release}"
        )
    if result.unaudited:
        print(f"  unaudited (behind the latest release, and skipped by pip-audit): {len(result.unaudited)}")
        for line in result.unaudited:
            print(f"    {line}")
    if not result.findings:
        print("no known vulnerabilities found")
    for finding in result.findings:
        fixed = ", ".join(finding.fixed_in) or "no fixed release"
        print(
            f"VULNERABLE {finding.name} {finding.version}: {finding.vuln_id}, fixed in {fixed} ({finding.source})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["check", "audit"])
    parser.add_argument("--strict", action="store_true", help="audit: an unaudited pin fails too")
    parser.add_argument("locks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.locks)
    pins = all_pins(args.locks)
    result = audit(pins, run_pip_audit(args.locks), latest_release)
    print_audit(result, pins)
    if result.findings:
        print(
            "error: raise each pin past its fixed release (make lock LOCK_ARGS='--upgrade-package NAME'; a floor"
        )
        print(
            "in pyproject.toml if need be), or, with no fixed release, replace the package or accept the risk here"
        )
        return 1
    if result.unaudited and args.strict:
        print("error: --strict, and some pins could not be audited")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
