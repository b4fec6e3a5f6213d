"""docker-compose.yml: valid by the Compose Specification and Docker Compose's own loader, and wired right."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from deployfiles import DOCKERFILES, WEB_SERVICES, ComposeLoad, compose_project, parse_dockerfile

SECRET = "a-test-secret-0123456789abcdef"
# What the API and the sink must agree on; a difference breaks job ids, access control or CORS between them.
SHARED_WEB_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "JOB_ID_SECRET", "API_KEY", "CORS_ORIGINS", "LOG_LEVEL")
REQUIRED_ENV = {
    "api": {
        "API_HOST": "0.0.0.0",
        "API_PORT": "8000",
        "RESULTS_PUBLIC_URL": "http://localhost:8001",
        "RESULTS_INTERNAL_URL": "http://sink:8001",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    },
    "sink": {
        "SINK_HOST": "0.0.0.0",
        "SINK_PORT": "8001",
        "RESULTS_STORE_URL": "sqlite:////var/lib/results-sink/results.db",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    },
    "inference": {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"},
}


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_is_valid_by_the_compose_spec_schema(
    compose: dict[str, Any], compose_spec_schema: dict[str, Any]
) -> None:
    errors = sorted(_validator(compose_spec_schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    ("path", "bad_value"),
    [
        (("services", "api", "contaner_name"), "x"),
        (("services", "api", "depends_on", "kafka", "condition"), "up"),
    ],
)
def test_schema_check_is_not_vacuous(
    compose: dict[str, Any], compose_spec_schema: dict[str, Any], path: tuple[str, ...], bad_value: str
) -> None:
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad_value
    assert list(_validator(compose_spec_schema).iter_errors(broken)), (
        f"a bad {'.'.join(path)} passed the schema"
    )


def test_docker_compose_loader_accepts_the_file_with_and_without_the_postgres_profile(
    compose_load: ComposeLoad,
) -> None:
    default = compose_project(compose_load, {"JOB_ID_SECRET": SECRET})
    assert set(default["services"]) == {"kafka", "api", "sink", "inference"}
    with_postgres = compose_project(compose_load, {"JOB_ID_SECRET": SECRET}, "postgres")
    assert set(with_postgres["services"]) == {"kafka", "api", "sink", "inference", "postgres"}


def test_the_shadow_and_canary_profiles_run_the_candidate_as_the_rollout_needs(
    compose_load: ComposeLoad,
) -> None:
    env = {"JOB_ID_SECRET": SECRET, "SHADOW_MODEL_NAME": "efficientnet-lite2"}
    services = compose_project(compose_load, env, "shadow", "canary")["services"]
    assert set(services) == {"kafka", "api", "sink", "inference", "shadow", "canary"}
    cache = parse_dockerfile(DOCKERFILES["inference"]).final_env["MODEL_CACHE_DIR"]
    for name in ("shadow", "canary"):
        service = services[name]
        assert service["image"] == services["inference"]["image"], name
        assert service["environment"]["MODEL_NAME"] == "efficientnet-lite2", name
        # A size the image did not convert is converted at start onto the volume: it must be the cache's path.
        assert [v["target"] for v in service["volumes"]] == [cache], name
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    # The shadow in a group of its own; the canary a member of the primary's (no role: primary).
    assert services["shadow"]["environment"]["INFERENCE_ROLE"] == "shadow"
    assert "INFERENCE_ROLE" not in services["canary"]["environment"]
    assert set(compose_project(compose_load, {"JOB_ID_SECRET": SECRET})["services"]).isdisjoint(
        {"shadow", "canary"}
    )


def test_job_id_secret_is_required_with_a_message(compose_load: ComposeLoad) -> None:
    result = compose_load({})
    assert result.returncode != 0
    assert "required variable JOB_ID_SECRET is missing a value: set JOB_ID_SECRET" in result.stderr


def test_required_env_is_set_after_interpolation(compose_load: ComposeLoad) -> None:
    services = compose_project(compose_load, {"JOB_ID_SECRET": SECRET})["services"]
    for service, wanted in REQUIRED_ENV.items():
        env = services[service]["environment"]
        assert {k: env.get(k) for k in wanted} == wanted, service
    assert services["api"]["environment"]["JOB_ID_SECRET"] == SECRET


@pytest.mark.parametrize("api_key", [None, "a-key-of-sixteen-chars-or-more"])
def test_api_and_sink_agree_on_shared_settings(compose_load: ComposeLoad, api_key: str | None) -> None:
    env = {"JOB_ID_SECRET": SECRET} | ({"API_KEY": api_key} if api_key else {})
    services = compose_project(compose_load, env)["services"]
    api, sink = (services[name]["environment"] for name in WEB_SERVICES)
    assert {k: api.get(k) for k in SHARED_WEB_ENV} == {k: sink.get(k) for k in SHARED_WEB_ENV}
    # Unset in the shell means unset in the container (not an empty key that would lock every request out).
    assert api["API_KEY"] == api_key


def test_postgres_profile_switches_the_sink_store(compose_load: ComposeLoad) -> None:
    url = "postgresql://results:pw@postgres:5432/results"
    project = compose_project(compose_load, {"JOB_ID_SECRET": SECRET, "RESULTS_STORE_URL": url}, "postgres")
    sink = project["services"]["sink"]
    assert sink["environment"]["RESULTS_STORE_URL"] == url
    assert sink["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}


def test_every_service_has_an_image_or_a_build_that_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            dockerfile = service["build"]["dockerfile"]
            assert service["build"]["context"] == "."
            assert DOCKERFILES[name].relative_to(DOCKERFILES[name].parents[1]).as_posix() == dockerfile, name
            assert DOCKERFILES[name].is_file(), dockerfile
        else:
            assert ":" in service["image"], f"{name}: pin a tag"
            assert not service["image"].endswith(":latest"), f"{name}: pin a tag"


def test_dependencies_exist_and_are_healthchecked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, how in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on undefined {target}"
            assert how["condition"] == "service_healthy", f"{name} -> {target}"
            assert _has_healthcheck(target, services[target]), (
                f"{name} waits for {target}, which has no healthcheck"
            )


def _has_healthcheck(name: str, service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False) and bool(service["healthcheck"]["test"])
    return name in DOCKERFILES and bool(parse_dockerfile(DOCKERFILES[name]).final_all("HEALTHCHECK"))


def test_the_three_services_wait_for_a_healthy_broker(compose: dict[str, Any]) -> None:
    for name in ("api", "sink", "inference"):
        assert compose["services"][name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert compose["services"]["api"]["depends_on"]["sink"]["condition"] == "service_healthy"


def test_inference_can_be_scaled(compose: dict[str, Any]) -> None:
    inference = compose["services"]["inference"]
    for fixed in ("container_name", "ports", "hostname"):
        assert fixed not in inference, f"inference has {fixed}: `--scale inference=3` would clash"


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {
        mount.split(":", 1)[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith(("/", "."))
    }
    assert used == declared
    assert "sink-data:/var/lib/results-sink" in compose["services"]["sink"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_kafka_is_a_single_node_kraft_broker(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    # apache/kafka where it can be pulled, the project's own broker image (KAFKA_IMAGE) where it cannot.
    assert kafka["image"].startswith("${KAFKA_IMAGE:-apache/kafka:4.")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    listener_names = {entry.split(":")[0] for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert {listener.split("://")[0] for listener in env["KAFKA_LISTENERS"].split(",")} <= listener_names
    for key in ("OFFSETS_TOPIC_REPLICATION_FACTOR", "TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[f"KAFKA_{key}"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "1000"  # see kafka_local/broker.py for why
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_published_ports_match_the_images(compose: dict[str, Any]) -> None:
    for name, port, variable in (("api", "8000", "API_HOST_PORT"), ("sink", "8001", "SINK_HOST_PORT")):
        # On loopback only; the host port can move (the compose tests run beside `make run`).
        assert compose["services"][name]["ports"] == [f"127.0.0.1:${{{variable}:-{port}}}:{port}"]
        exposed = parse_dockerfile(DOCKERFILES[name]).final_all("EXPOSE")
        assert [i.value for i in exposed] == [port], name


def test_postgres_is_optional_and_healthchecked(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert compose["services"]["sink"]["depends_on"]["postgres"]["required"] is False
