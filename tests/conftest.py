"""Session fixtures: one real Kafka broker for the whole run, and factories for unique topics and groups."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kafka_local.provision import provide_broker
from launcher.system import System
from pipeline_core.clients import create_admin_client
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import ensure_topics, pipeline_topics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from docker_local.deploy import Deployment


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real broker: KAFKA_BOOTSTRAP_SERVERS, else the project's broker image in a container (testcontainers)
    when a Docker engine answers or can be started here, else the jar-launched one (kafka_local/provision.py)."""
    if os.environ.get("KAFKA_TEST_BROKER", "auto") != "jar" and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        from docker_local.engine import EngineUnavailableError, ensure_engine

        try:
            ensure_engine(compose=False)
        except EngineUnavailableError as e:
            logging.getLogger(__name__).info("no Docker engine for the test broker: %s", e)
    with provide_broker(tmp_path_factory.mktemp("kafka"), try_docker=True) as (bootstrap, _local):
        yield bootstrap


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine with Compose v2, started (as root) when it is not running; else the test is skipped with
    the reason (`make test` as root installs and starts one: scripts/ensure-system-packages.sh)."""
    from docker_local.engine import EngineUnavailableError, ensure_engine

    try:
        ensure_engine()
    except EngineUnavailableError as e:
        pytest.skip(f"no Docker deployment here: {e}")


@pytest.fixture(scope="session")
def compose_deployment(
    docker_engine: None, tmp_path_factory: pytest.TempPathFactory, output_dir: Path
) -> Iterator[Deployment]:
    """docker-compose.yml deployed as `make docker-up` does it (images built here, two inference consumers),
    as a compose project of its own on free 127.0.0.1 ports; its logs end up in test-output/."""
    import secrets

    from docker_local.deploy import Deployment
    from kafka_local import free_port

    deployment = Deployment(
        project=unique("kic-test"),
        env_file=tmp_path_factory.mktemp("compose") / "compose.env",
        api_port=free_port(),
        sink_port=free_port(),
        kafka_port=free_port(),
        settings={"JOB_ID_SECRET": secrets.token_hex(32)},
    )
    try:
        deployment.up()
        yield deployment
    finally:
        (output_dir / f"{deployment.project}.log").write_text(deployment.logs(tail=5000))
        deployment.down(volumes=True)


@pytest.fixture(params=["make-run", "compose"])
def deployed(request: pytest.FixtureRequest) -> System | Deployment:
    """The whole system as `make run` starts it, then as `make docker-up` does: the end-to-end tests run on both."""
    if request.param == "compose":
        deployment: Deployment = request.getfixturevalue("compose_deployment")
        return deployment
    system: System = request.getfixturevalue("running_system")
    return system


@pytest.fixture(scope="session")
def local_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], object]:
    """Tests that stop and restart a broker get their own jar-launched one, never the shared cluster."""
    from kafka_local import LocalBroker, free_port

    def make() -> LocalBroker:
        return LocalBroker(tmp_path_factory.mktemp("own-kafka"), free_port(), free_port())

    return make


BROKER_FIXTURES = {"kafka_bootstrap", "local_broker_factory", "compose_deployment", "deployed"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real broker (through any fixture), so `make test-fast` can leave them out."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


def unique(prefix: str) -> str:
    """A name no other test uses, so tests never see each other's messages."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")


@pytest.fixture(params=KAFKA_CLIENTS)
def client_settings(request: pytest.FixtureRequest, pipeline_settings: PipelineSettings) -> PipelineSettings:
    """`pipeline_settings` once with each Kafka client library: the contract both must keep."""
    return pipeline_settings.model_copy(update={"kafka_client": request.param})


@pytest.fixture
def pipeline_settings(kafka_bootstrap: str) -> PipelineSettings:
    """Settings with this test's own topics and consumer groups, created on the broker."""
    settings = PipelineSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_images=unique("images"),
        topic_predictions=unique("predictions"),
        topic_dead_letter=unique("dead-letter"),
        topic_feedback=unique("feedback"),
        topic_predictions_shadow=unique("predictions-shadow"),
        topic_dead_letter_shadow=unique("dead-letter-shadow"),
        consumer_group_inference=unique("inference"),
        consumer_group_shadow=unique("inference-shadow"),
        consumer_group_sink=unique("sink"),
        topic_partitions=6,
        _env_file=None,  # type: ignore[call-arg]
    )
    admin = create_admin_client(settings, "tests")
    try:
        ensure_topics(admin, pipeline_topics(settings))
    finally:
        admin.close()
    return settings


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    """The pipeline's spans during this test (in this process), kept by the OpenTelemetry SDK's in-memory
    exporter; afterwards the pipeline's spans are no-ops again, as they are by default."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pipeline_core import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts a person may want to look at (screenshots, reports)."""
    path = Path(__file__).resolve().parent.parent / "test-output"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos that ship offline with scikit-image and scikit-learn, as JPEG files' bytes."""
    import io

    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    arrays = {"chelsea": data.chelsea(), "coffee": data.coffee()}
    samples = load_sample_images()
    for name, array in zip(samples.filenames, samples.images, strict=True):
        arrays[Path(name).stem] = array  # "china", "flower"
    encoded = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=92)
        encoded[name] = buffer.getvalue()
    return encoded


@pytest.fixture(scope="session")
def expected_labels() -> dict[str, set[str]]:
    """What a correct classifier says of each photo: its top-1 is one of these Keras-style labels."""
    return {"chelsea": {"tiger_cat", "Egyptian_cat", "tabby"}, "coffee": {"espresso"}}


class SystemFactory:
    """Starts whole systems (sink, consumers, API as real processes) on the session broker, each isolated."""

    def __init__(self, bootstrap: str, base_dir: Path, log_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.base_dir = base_dir
        self.log_dir = log_dir
        self.started: list[object] = []

    def __call__(
        self,
        consumers: int = 2,
        bootstrap: str | None = None,
        shadow_model: str | None = None,
        shadow_consumers: int = 1,
        canary_consumers: int = 0,
        **env: str,
    ) -> System:
        from kafka_local import free_port
        from launcher.system import System, isolated_env

        name = unique("system")
        # The suites pile up backlogs on purpose (faults with work in flight, bursts of hostile uploads), so
        # their systems admit by count only; admission by expected wait has its own system-level test
        # (tests/e2e/test_hostile_traffic.py), its unit tests, and the locust runs in docs/benchmarks.md.
        isolation = isolated_env(name) | {"LOG_LEVEL": "INFO", "MAX_QUEUE_WAIT_S": "0"}
        log = (self.log_dir / f"{name}.log").open("w")
        system = System(
            bootstrap or self.bootstrap,
            self.base_dir / name,
            free_port(),
            free_port(),
            consumers,
            env=isolation | env,
            out=log,
            shadow_model=shadow_model,
            shadow_consumers=shadow_consumers,
            canary_consumers=canary_consumers,
        )
        self.started.append((system, log))
        system.start()
        return system

    def stop_all(self) -> None:
        for system, log in self.started:  # type: ignore[misc]
            system.stop()
            log.close()


@pytest.fixture(scope="session")
def system_factory(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, output_dir: Path
) -> Iterator[SystemFactory]:
    """Make whole running systems; each gets its own topics, groups, store and ports. Logs: test-output/."""
    factory = SystemFactory(kafka_bootstrap, tmp_path_factory.mktemp("systems"), output_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def running_system(system_factory: SystemFactory) -> System:
    """One whole system (API, two inference consumers, sink) shared by the end-to-end tests."""
    return system_factory(consumers=2)
