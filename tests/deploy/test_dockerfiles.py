"""docker/*.Dockerfile: lint-clean, small, non-root, exec-form, healthchecked, each with only its extra."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deployfiles import BROKER_DOCKERFILE, DOCKERFILES, HADOLINT_CONFIG, REPO, WEB_SERVICES, Dockerfile
from pydantic_settings import BaseSettings

from inference_consumer.settings import ConsumerSettings
from producer_api.settings import ApiSettings
from results_sink.settings import SinkSettings

EXTRAS = {"api": {"api"}, "sink": {"sink", "postgres"}, "inference": {"inference"}}
MODULES = {"api": "producer_api", "sink": "results_sink", "inference": "inference_consumer"}
SETTINGS: dict[str, type[BaseSettings]] = {
    "api": ApiSettings,
    "sink": SinkSettings,
    "inference": ConsumerSettings,
}
PORT_ENV = {"api": ("API_PORT", "8000"), "sink": ("SINK_PORT", "8001")}
# Environment the images set for Python and pip themselves, not for our settings.
RUNTIME_ENV = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK"}
PIP_INSTALL = re.compile(r"pip (?:install|wheel)\b[^&;]*?\"(?:kafka-image-classifier|\.)\[([a-z,]+)\]\"")


def test_hadolint_finds_nothing(hadolint: str) -> None:
    result = subprocess.run(
        [
            hadolint,
            "--config",
            str(HADOLINT_CONFIG),
            "--no-color",
            *map(str, DOCKERFILES.values()),
            str(BROKER_DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_config_fails_on_a_style_finding(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN cd /tmp && echo hi\n")  # DL3003: use WORKDIR, not cd
    result = subprocess.run(
        [hadolint, "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3003" in result.stdout


def test_hadolint_config_ignores_no_rule_without_a_reason() -> None:
    lines = HADOLINT_CONFIG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ignored:"))
    ignored = [line for line in lines[start + 1 :] if line.lstrip().startswith("- ")]
    assert lines[start] == "ignored: []" or all("#" in line for line in ignored), (
        "give each ignored rule a reason"
    )


@pytest.fixture(params=list(DOCKERFILES))
def service(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_builds_from_python_311_slim_in_two_stages(dockerfiles: dict[str, Dockerfile], service: str) -> None:
    dockerfile = dockerfiles[service]
    assert [i.value for i in dockerfile.global_args] == ["PYTHON_IMAGE=python:3.11-slim"]
    assert [i.value for i in dockerfile.all("FROM")] == [
        "${PYTHON_IMAGE} AS wheels",
        "${PYTHON_IMAGE} AS runtime",
    ]
    assert not dockerfile.all("ADD")


def test_wheels_are_built_in_one_stage_and_mounted_in_the_other(
    dockerfiles: dict[str, Dockerfile], service: str
) -> None:
    wheels, runtime = dockerfiles[service].stages
    assert any("pip wheel" in i.value and "--wheel-dir /wheels" in i.value for i in wheels if i.name == "RUN")
    install = _only([i for i in runtime if i.name == "RUN" and "pip install" in i.value])
    assert install.value.startswith("--mount=type=bind,from=wheels,source=/wheels,target=/wheels ")
    assert "--no-index" in install.value
    assert "--find-links=/wheels" in install.value
    assert not [i for i in runtime if i.name == "COPY"], (
        "the runtime stage copies nothing: no wheels in a layer"
    )


def test_installs_only_its_own_extras(dockerfiles: dict[str, Dockerfile], service: str) -> None:
    wheels, runtime = dockerfiles[service].stages
    for stage in (wheels, runtime):
        runs = " ".join(i.value for i in stage if i.name == "RUN")
        assert [set(m.split(",")) for m in PIP_INSTALL.findall(runs)] == [EXTRAS[service]]
    if service in WEB_SERVICES:
        # Instructions only: the comments may well say "no TensorFlow".
        text = " ".join(
            i.value for stage in dockerfiles[service].stages for i in stage if i.name != "COMMENT"
        )
        assert "inference" not in text.lower()
        assert "tensorflow" not in text.lower()
        copied = {i.value.split()[0] for i in wheels if i.name == "COPY"}
        assert "inference_consumer/" not in copied


def test_leaves_no_cache_behind(dockerfiles: dict[str, Dockerfile], service: str) -> None:
    for run in dockerfiles[service].all("RUN"):
        for command in re.findall(r"pip (?:install|wheel)\b[^&;]*", run.value):
            assert "--no-cache-dir" in command, f"line {run.line}: {command}"
        if "apt-get install" in run.value:
            assert "rm -rf /var/lib/apt/lists/*" in run.value, f"line {run.line}"
    assert dockerfiles[service].final_env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_runs_as_a_non_root_user_set_before_cmd(dockerfiles: dict[str, Dockerfile], service: str) -> None:
    final = dockerfiles[service].final
    names = [i.name for i in final]
    users = [i for i in final if i.name == "USER"]
    assert users, "no USER: the container would run as root"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit(), "a numeric uid, so a runtime can verify it is not root"
    assert int(uid) > 0
    assert not gid or int(gid) > 0
    assert names.index("USER") < names.index("CMD")
    assert f"--uid {uid} " in " ".join(i.value for i in final if i.name == "RUN"), "the user is created"


def test_cmd_is_exec_form_so_python_is_pid_1(dockerfiles: dict[str, Dockerfile], service: str) -> None:
    final = dockerfiles[service].final
    cmd = _only([i for i in final if i.name == "CMD"])
    assert json.loads(cmd.value) == ["python", "-m", MODULES[service]]
    assert not [i for i in final if i.name in ("ENTRYPOINT", "STOPSIGNAL")], "SIGTERM goes straight to python"
    assert final[-1] is cmd


def test_web_images_healthcheck_readiness_with_the_standard_library(
    dockerfiles: dict[str, Dockerfile],
) -> None:
    for service in WEB_SERVICES:
        dockerfile = dockerfiles[service]
        check = _only(dockerfile.final_all("HEALTHCHECK")).value
        options, _, command = check.partition("CMD ")
        assert all(f"--{o}=" in options for o in ("interval", "timeout", "start-period", "retries")), service
        argv = json.loads(command)
        assert argv[:2] == ["python", "-c"]
        code = argv[2]
        compile(code, f"{service} HEALTHCHECK", "exec")
        env_name, port = PORT_ENV[service]
        assert "urllib.request" in code
        assert "/readyz" in code, "healthy means ready (broker reachable, consumer working), not merely alive"
        assert f"os.environ.get('{env_name}', '{port}')" in code
        assert dockerfile.final_env[env_name] == port
        assert [i.value for i in dockerfile.final_all("EXPOSE")] == [port]


def test_inference_image_prepares_the_model_at_build_time(dockerfiles: dict[str, Dockerfile]) -> None:
    dockerfile = dockerfiles["inference"]
    cache_dir = dockerfile.final_env["MODEL_CACHE_DIR"]
    assert cache_dir == "/opt/model-cache"
    assert "model_cache_dir" in ConsumerSettings.model_fields  # so MODEL_CACHE_DIR is what the consumer reads
    final = dockerfile.final
    prepare = _only([i for i in final if i.name == "RUN" and "load_classifier" in i.value])
    assert [i.name for i in final].index("USER") < final.index(prepare), "prepared as the user that runs it"
    assert f"install -d -o app -g app -m 0755 {cache_dir}" in " ".join(
        i.value for i in final if i.name == "RUN"
    )
    code = re.fullmatch(r'python -c "([^"]+)"(\s+&& .*)?', prepare.value)
    assert code is not None, prepare.value
    calls = [n for n in ast.walk(ast.parse(code.group(1))) if isinstance(n, ast.Call)]
    load = _only([c for c in calls if getattr(c.func, "id", None) == "load_classifier"])
    (keyword,) = load.keywords
    assert keyword.arg == "cache_dir"
    assert ast.unparse(keyword.value) == f"Path('{cache_dir}')"


def test_web_images_have_no_model_step(dockerfiles: dict[str, Dockerfile]) -> None:
    for service in WEB_SERVICES:
        assert "MODEL_CACHE_DIR" not in dockerfiles[service].final_env


def test_env_names_are_settings_the_service_reads(
    dockerfiles: dict[str, Dockerfile], compose: dict[str, Any], service: str
) -> None:
    # Settings ignore unknown variables: a misspelt name in compose or a Dockerfile would silently do nothing.
    known = {name.upper() for name in SETTINGS[service].model_fields}
    assert SETTINGS[service].model_config.get("env_prefix", "") == ""
    names = (
        set(dockerfiles[service].final_env) | set(compose["services"][service]["environment"])
    ) - RUNTIME_ENV
    assert names <= known, f"{service}: not settings of {SETTINGS[service].__name__}: {sorted(names - known)}"


def test_docker_stops_services_after_their_own_graceful_shutdown(compose: dict[str, Any]) -> None:
    own_grace_s = {
        "api": ApiSettings.model_fields["shutdown_timeout_s"].default,
        "sink": SinkSettings.model_fields["shutdown_grace_s"].default + 5,  # uvicorn_graceful_shutdown_s
        "inference": ConsumerSettings.model_fields["shutdown_grace_s"].default,
    }
    for service, grace_s in own_grace_s.items():
        period = compose["services"][service]["stop_grace_period"]
        assert int(period.removesuffix("s")) > grace_s, (
            f"{service}: stop_grace_period {period} <= {grace_s} s"
        )


def test_dockerignore_lets_in_exactly_what_the_images_copy(dockerfiles: dict[str, Dockerfile]) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is out unless named"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for dockerfile in dockerfiles.values()
        for copy in dockerfile.all("COPY")
        for source in copy.value.split()[:-1]
        if not source.startswith("--")
    }
    assert copied <= allowed, f"COPY of paths .dockerignore leaves out: {sorted(copied - allowed)}"
    for secret_or_bulky in (".env", ".venv", ".git", "var", "tests", "kafka_image_classifier.egg-info"):
        assert not any(fnmatch.fnmatch(secret_or_bulky, a) for a in allowed), secret_or_bulky


def _only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]
