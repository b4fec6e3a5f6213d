"""A replicated, secured cluster: three KRaft nodes from the jars, TLS and SASL/SCRAM on every listener, an
authorizer with each service's ACLs only. The whole system runs on it; a broker is killed and all three are
restarted in turn under load; wrong credentials, an unknown CA, a plaintext client and a missing ACL each get
an error that names the setting to fix. Figures of the failover runs: docs/reliability.md."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from support import predictions_on_topic, stored_results, wait_by_polling

from kafka_local.cluster import ADMIN, SERVICE_USERS, LocalCluster
from kafka_local.tls import ensure_tls
from launcher.system import System, isolated_env
from pipeline_core.settings import PipelineSettings

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
STREAM_TIMEOUT_S = 60
LATE_RESULT_S = 120  # after the load, for results the stream gave up on


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("secured-cluster"), brokers=3, security="SASL_SSL") as running:
        yield running


@pytest.fixture(scope="module")
def system(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory, output_dir: Path
) -> Iterator[System]:
    from kafka_local import free_port

    name = "secured"
    log = (output_dir / "secured-cluster-system.log").open("w")
    running = System(
        cluster.bootstrap_servers,
        tmp_path_factory.mktemp("secured-system"),
        free_port(),
        free_port(),
        consumers=2,
        # A result that does not come within a minute is a stall, not a pause: the streams give up then.
        env=isolated_env(name)
        | {"LOG_LEVEL": "INFO", "SSE_STREAM_TIMEOUT_S": str(STREAM_TIMEOUT_S)}
        | cluster.client_env(ADMIN),
        role_env={user: cluster.client_env(user) for user in SERVICE_USERS},
        grant_acls=True,
        out=log,
    )
    running.start(ready_timeout_s=180)
    yield running
    running.stop()
    log.close()


def service_settings(cluster: LocalCluster, user: str, **overrides: str) -> dict[str, str]:
    return dict(os.environ) | isolated_env("probe") | cluster.client_env(user) | overrides


class Load:
    """A few clients that each upload a photo, follow it by SSE to its result, and upload the next: what each
    answer was, and each accepted upload's round trip, measured as it happens."""

    def __init__(self, system: System, photo: bytes, threads: int = 4) -> None:
        self.system = system
        self.photo = photo
        self.stop = threading.Event()
        self.trips: dict[str, tuple[float, float]] = {}  # job id -> (sent, result seen)
        self.missing: list[
            str
        ] = []  # accepted, and no result before the stream gave up (SSE_STREAM_TIMEOUT_S)
        self.statuses: Counter[int] = Counter()
        self.refusals: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(
                        f"{self.system.api_url}/v1/images", files=[("file", ("chelsea.jpg", self.photo))]
                    )
                except httpx.TransportError as e:
                    self.statuses[0] += 1
                    self.errors.append(repr(e))
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code != 202:
                    self.refusals.append((response.status_code, response.headers.get("Retry-After")))
                    time.sleep(0.2)
                    continue
                job = response.json()["jobs"][0]["id"]
                with connect_sse(client, "GET", f"{self.system.sink_url}/v1/events?ids={job}") as source:
                    for event in source.iter_sse():
                        if event.event == "result":
                            self.trips[job] = (sent, time.monotonic())
                            break
                if job not in self.trips:
                    self.missing.append(job)

    @property
    def accepted(self) -> set[str]:
        """Every upload answered 202: those whose result the stream delivered, and those it gave up on."""
        return set(self.trips) | set(self.missing)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(150)


def leader_of_most_partitions(cluster: LocalCluster, topics: list[str]) -> int:
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers, **cluster.client_config(ADMIN))
    try:
        leaders = Counter(
            p["leader_id"]
            for t in admin.describe_topics(topics)
            for p in t["partitions"]
            if p["leader_id"] >= 0
        )
    finally:
        admin.close()
    return leaders.most_common(1)[0][0]


def wait_fully_replicated(cluster: LocalCluster, topics: list[str], timeout_s: float = 120) -> float:
    """Seconds until every partition of `topics` has all its replicas in sync again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=cluster.bootstrap_servers, **cluster.client_config(ADMIN)
            )
            try:
                described = admin.describe_topics(topics)
            finally:
                admin.close()
            if all(
                len(p["isr_nodes"]) == len(p["replica_nodes"]) for t in described for p in t["partitions"]
            ):
                return time.monotonic() - started
        except KafkaError:
            pass
        time.sleep(1)
    raise AssertionError(f"partitions of {topics} not fully in sync within {timeout_s} s")


def pause_report(load: Load, window: tuple[float, float]) -> str:
    """Round trips of the uploads sent during the event: the pause it caused."""
    trips = sorted(done - sent for sent, done in load.trips.values() if window[0] <= sent <= window[1])
    if not trips:
        return "no upload accepted during the event"
    p99 = trips[min(len(trips) - 1, int(len(trips) * 0.99))]
    return (
        f"{len(trips)} uploads during the event: round trip p50 {statistics.median(trips):.2f} s, "
        f"p99 {p99:.2f} s, max {trips[-1]:.2f} s"
    )


def where_lost(system: System, lost: set[str]) -> str:
    """Where the lost jobs stopped, for the failure message (CI shows it, not the system's log): their
    predictions on the topic or not, and the services' warnings."""
    on_topic = predictions_on_topic(system.settings(), lost, timeout_s=20)
    log = REPO / "test-output" / "secured-cluster-system.log"
    warnings = [
        line.strip()[:300]
        for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
        if any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL "))
        and "librdkafka" not in line
        and "Connect to" not in line
    ]
    return f"{len(set(on_topic) & lost)} of them on the predictions topic; the services' last warnings: " + (
        " | ".join(warnings[-12:]) or "none"
    )


def check_nothing_lost_or_doubled(system: System, load: Load) -> None:
    ids = load.accepted
    assert ids, "no upload was accepted"
    # A result the stream gave up on may be late rather than lost (a rebalance amid the restarts): lost is what
    # has no result LATE_RESULT_S after the load; late ones are reported.
    late = set(load.missing)
    deadline = time.monotonic() + LATE_RESULT_S
    while late - set(stored_results(system)) and time.monotonic() < deadline:
        time.sleep(0.5)
    lost = late - set(stored_results(system))
    assert not lost, (
        f"{len(lost)} accepted uploads have no result {LATE_RESULT_S} s after the load; "
        + where_lost(system, lost)
    )
    if late:
        print(f"\n{len(late)} results came after the stream's {STREAM_TIMEOUT_S} s", end="")
    assert not load.errors, load.errors[:3]
    bad = {status: n for status, n in load.statuses.items() if status not in (202, 429, 503)}
    assert not bad, f"answers other than 202/429/503: {bad}"
    assert all(retry for status, retry in load.refusals if status in (429, 503)), load.refusals[:5]
    # On the topic, every accepted upload is there once.
    counts = predictions_on_topic(system.settings(), ids)
    assert ids <= set(counts), f"{len(ids - set(counts))} accepted images have no prediction on the topic"
    doubled = {job: n for job, n in counts.items() if job in ids and n > 1}
    assert not doubled, f"{len(doubled)} predictions on the topic more than once (exactly-once)"


def test_the_pipeline_runs_on_the_secured_cluster_with_replicated_topics(
    system: System, cluster: LocalCluster, photos: dict[str, bytes]
) -> None:
    settings = system.settings()
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers, **cluster.client_config(ADMIN))
    try:
        described = admin.describe_topics([settings.topic_images, settings.topic_predictions])
    finally:
        admin.close()
    assert all(len(p["replica_nodes"]) == 3 for t in described for p in t["partitions"])
    with httpx.Client(base_url=system.api_url, timeout=30) as client:
        response = client.post("/v1/images", files=[("file", ("chelsea.jpg", photos["chelsea"]))])
    assert response.status_code == 202, response.text
    job = response.json()["jobs"][0]
    with httpx.Client(timeout=10) as sink:
        assert wait_by_polling(sink, job["result_url"].replace("localhost", "127.0.0.1"))["status"] == "done"
    assert predictions_on_topic(system.settings(), {job["id"]})[job["id"]] == 1


def test_kill_9_the_leader_of_most_partitions_under_load(
    system: System, cluster: LocalCluster, photos: dict[str, bytes]
) -> None:
    settings = system.settings()
    topics = [settings.topic_images, settings.topic_predictions]
    with Load(system, photos["chelsea"]) as load:
        time.sleep(5)
        victim = leader_of_most_partitions(cluster, topics)
        killed_at = time.monotonic()
        cluster.nodes[victim - 1].kill()
        time.sleep(15)
        cluster.nodes[victim - 1].start(timeout_s=120)
        rejoined_s = wait_fully_replicated(cluster, topics)
        recovered_at = time.monotonic()
        time.sleep(3)
    check_nothing_lost_or_doubled(system, load)
    report = pause_report(load, (killed_at - 1, killed_at + 15))
    print(
        f"\nkill -9 of node {victim}: {dict(load.statuses)}; {report}; back in sync {rejoined_s:.1f} s after "
        f"its restart ({recovered_at - killed_at:.0f} s after the kill)"
    )


def test_rolling_restart_of_all_three_under_load(
    system: System, cluster: LocalCluster, photos: dict[str, bytes]
) -> None:
    settings = system.settings()
    topics = [settings.topic_images, settings.topic_predictions]
    events = []
    with Load(system, photos["chelsea"]) as load:
        time.sleep(3)
        for node in cluster.nodes:
            started = time.monotonic()
            node.stop()
            node.start(timeout_s=120)
            wait_fully_replicated(cluster, topics)
            events.append((started, time.monotonic()))
        time.sleep(3)
    check_nothing_lost_or_doubled(system, load)
    report = pause_report(load, (events[0][0], events[-1][1]))
    print(f"\nrolling restart ({events[-1][1] - events[0][0]:.0f} s): {dict(load.statuses)}; {report}")


def run_service(module: str, env: dict[str, str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )


def test_a_wrong_password_is_refused_naming_the_settings(
    system: System, cluster: LocalCluster, tmp_path: Path
) -> None:
    from kafka_local import free_port

    env = service_settings(
        cluster, "sink", KAFKA_SASL_PASSWORD="not-the-password", KAFKA_CONNECT_TIMEOUT_S="10"
    ) | {k: v for k, v in system.service_env().items() if k.startswith(("TOPIC_", "CONSUMER_GROUP"))}
    store = {"SINK_PORT": str(free_port()), "RESULTS_STORE_URL": f"sqlite:///{tmp_path}/probe.db"}
    done = run_service("results_sink", env | store)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "KAFKA_SASL_PASSWORD" in output, output[-2000:]
    assert "not-the-password" not in output


def test_an_unknown_ca_is_refused_naming_the_setting(
    system: System, cluster: LocalCluster, tmp_path: Path
) -> None:
    other_ca = ensure_tls(tmp_path / "other-ca").ca
    settings = PipelineSettings.model_validate(
        {k.lower(): v for k, v in (cluster.client_env("api") | {"KAFKA_SSL_CAFILE": str(other_ca)}).items()}
    )
    from pipeline_core.clients import diagnose_connection

    reason = diagnose_connection(settings)
    assert reason is not None and "KAFKA_SSL_CAFILE" in reason, reason
    env = service_settings(cluster, "inference", KAFKA_SSL_CAFILE=str(other_ca), KAFKA_CONNECT_TIMEOUT_S="5")
    done = run_service("inference_consumer", env)
    assert done.returncode == 1
    assert "KAFKA_SSL_CAFILE" in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


def test_a_plaintext_client_is_refused_on_the_secured_listener(cluster: LocalCluster) -> None:
    from pipeline_core.clients import diagnose_connection

    plaintext = PipelineSettings.model_validate({"kafka_bootstrap_servers": cluster.bootstrap_servers})
    reason = diagnose_connection(plaintext)
    assert reason is not None and "KAFKA_SECURITY_PROTOCOL" in reason, reason
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers=cluster.bootstrap_servers,
            request_timeout_ms=3000,
            api_version_auto_timeout_ms=3000,
        ).list_topics()


def test_a_missing_acl_is_named(system: System, cluster: LocalCluster) -> None:
    # The API's principal may write images, not read them: as a consumer it is refused, and says why.
    env = service_settings(cluster, "api", KAFKA_CONNECT_TIMEOUT_S="10") | {
        k: v for k, v in system.service_env().items() if k.startswith(("TOPIC_", "CONSUMER_GROUP"))
    }
    done = run_service("inference_consumer", env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert "ACL" in output and "KAFKA_SASL_USERNAME" in output, output[-2000:]


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        ({"KAFKA_SASL_PASSWORD": "not-the-password"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SSL_CAFILE": None}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_librdkafka_reports_a_refused_setting_from_its_threads_and_the_client_raises_it(
    system: System, cluster: LocalCluster, tmp_path: Path, wrong: dict[str, str | None], named: str
) -> None:
    """confluent-kafka never fails at creation: the wrapper raises what librdkafka reported, naming the setting,
    from the runtime's next call (here the join's metadata check), once it has persisted."""
    from pipeline_core.clients import create_consumer_client
    from pipeline_core.errors import KafkaAccessError

    if "KAFKA_SSL_CAFILE" in wrong:
        wrong = {"KAFKA_SSL_CAFILE": str(ensure_tls(tmp_path / "other-ca").ca)}
    env = cluster.client_env("sink") | {k: v for k, v in wrong.items() if v is not None}
    settings = PipelineSettings.model_validate(
        {k.lower(): v for k, v in env.items()} | {"kafka_client": "confluent-kafka"}
    )
    consumer = create_consumer_client(settings, "tests", "tests-refused")
    topics = [system.settings().topic_images]

    def join_until_refused() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            consumer.topics_known(topics)
            time.sleep(0.2)

    try:
        with pytest.raises(KafkaAccessError, match=named) as refused:
            join_until_refused()
    finally:
        consumer.close()
    assert "not-the-password" not in str(refused.value), "a secret in the error"
