"""Capacity model: the machines, partitions and broker traffic 1,000, 10,000 and 100,000 images/s would need,
worked out from what `make bench` (docs/benchmarks/pipeline.json) and `python -m benchmarks.store_bench`
(docs/benchmarks/store.json) measured on one machine.

Run `python -m benchmarks.capacity` or `make capacity` (instant: it measures nothing). It writes
docs/scaling.md whole: the tables are computed here, and the page's prose is the template in `render_page`
below, so edit that, not the page. Every input is either measured (read from the two reports, with their dates
and commands) or modelled (`Assumptions`, each named on the page).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inference_consumer.settings import ConsumerSettings
from pipeline_core.settings import PipelineSettings
from results_sink.settings import SinkSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_JSON = PROJECT_ROOT / "docs" / "benchmarks" / "pipeline.json"
STORE_JSON = PROJECT_ROOT / "docs" / "benchmarks" / "store.json"
OUTPUT = PROJECT_ROOT / "docs" / "scaling.md"
SCALES = (1_000, 10_000, 100_000)
ROLES = ("api", "inference", "sink", "broker")
COMMIT_INTERVAL_S = PipelineSettings.model_fields["commit_interval_ms"].default / 1000
# S3's documented request rates per key prefix; an object store of another make has limits of the same order.
OBJECT_STORE_PUTS_PER_PREFIX = 3_500
OBJECT_STORE_GETS_PER_PREFIX = 5_500


def _default(model: Any, name: str) -> Any:
    """A setting's default, so the model follows the code's defaults."""
    return model.model_fields[name].default


@dataclass(frozen=True)
class Assumptions:
    """What the model takes as given rather than measured; each is named on the page."""

    cores_per_machine: int = 2  # machines like the measured one
    utilisation: float = 0.7  # plan every machine (and every ceiling) for this share of what it can do
    image_record_bytes: int = 50_000  # an image record: a ~50 KB JPEG and its headers
    reference_record_bytes: int = (
        300  # the same record with the image in object storage: a key and the headers
    )
    replication_factor: int = 3  # production's RF (make run uses 1)
    images_consumer_groups: int = 1  # the inference group
    predictions_consumer_groups: int = 1  # the sink replicas share one group
    images_per_upload: int = 4  # as in the benchmark: one SSE stream per upload
    inference_batch: int = _default(ConsumerSettings, "batch_max_size")  # one model call, full at saturation
    # One poll, and one transaction, at saturation: POLL_MAX_IMAGES (the model calls it holds are inference_batch).
    inference_poll: int = _default(ConsumerSettings, "poll_max_images")
    sink_batch: int = 16  # the store figures used for the sink's own writes (measured at 1, 16, 100)
    nic_bytes_per_s: float = 1.25e9  # 10 Gbit/s per broker, each direction
    partition_bytes_per_s: float = 10e6  # what one partition is planned to take in
    broker_disk_bytes: float = 4e12  # usable disk per broker
    images_retention_s: float = _default(PipelineSettings, "topic_images_retention_ms") / 1000
    predictions_retention_s: float = 7 * 86_400.0  # the broker's default log.retention.hours (168)
    max_sse_connections: int = _default(SinkSettings, "max_sse_connections")  # per sink replica
    long_stream_s: float = 30.0  # a client that keeps its stream open this long (a page left waiting)
    min_partitions: int = _default(PipelineSettings, "topic_partitions")


@dataclass(frozen=True)
class StoreFigures:
    """What store_bench measured, reduced to what the model uses."""

    date: str
    machine: str
    command: str
    smoke: bool
    server: str
    prediction_record_bytes: int
    pg_write_ceiling: float  # results/s, the best batch size: writers take turns, so all replicas together
    pg_write_ceiling_batch: int
    pg_client_ms: float  # sink-side CPU per result written, at the assumed sink batch
    pg_server_ms: float | None  # PostgreSQL's CPU per result written, at that batch
    sqlite_write_ceiling: float
    sqlite_client_ms: float
    notifications_per_s: float  # the most a second replica received (while the writer went flat out)
    listener_results_per_s: float  # the most results/s the second replica's listener handed over live
    listener_ms_by_batch: dict[int, float]  # its CPU per result, by the writer's batch size
    feed_results_per_s: float  # the listener's read path alone: the most one replica can be fed
    feed_client_ms: float  # a replica's CPU per result it reads from the feed
    feed_server_ms: float | None  # PostgreSQL's CPU per result one replica reads
    sse_kb_per_stream: float


@dataclass(frozen=True)
class Measured:
    """What the model reads from the two reports."""

    pipeline_date: str
    pipeline_machine: str
    pipeline_smoke: bool
    level: str  # which sweep level the CPU figures are from
    level_images_per_s: float
    cpu_ms: dict[str, float]  # role -> CPU ms per image at that level
    load_generator_ms: float
    model_ms_per_image: float | None
    ceiling_images_per_s: float | None
    round_trip_p99_s: float
    broker_cores: list[tuple[float, float]]  # (images/s, broker cores) at each clean sweep level
    clients: dict[str, dict[str, float]]  # Kafka client library -> role -> CPU ms per image, at saturation
    store: StoreFigures


def role_cpu_ms(cpu_s_per_image: dict[str, float]) -> dict[str, float]:
    """CPU ms per image of each role from a level's per-process figures (the inference processes summed)."""
    roles = {role: 0.0 for role in ROLES}
    for process, seconds in cpu_s_per_image.items():
        role = "inference" if process.startswith("inference") else process
        if role in roles:
            roles[role] += seconds * 1000
    return roles


def clean_levels(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep levels that shed nothing and lost nothing (all of them if none did)."""
    levels: list[dict[str, Any]] = report["sweep"]
    clean = [lv for lv in levels if not lv["rejected"] and not lv["errors"] and not lv["timed_out"]]
    return clean or levels


def pick_level(report: dict[str, Any]) -> dict[str, Any]:
    """The busiest clean sweep level: every process as busy as it gets while the system still keeps up (the
    CPU per image there includes its share of each process's idle cost)."""
    return max(clean_levels(report), key=lambda lv: float(lv["completed_images_per_s"]))


def _run_at(runs: Sequence[dict[str, Any]], batch: int) -> dict[str, Any]:
    """The run with this batch size, else the nearest one (on a log scale)."""
    return min(runs, key=lambda r: abs(math.log(r["batch_size"]) - math.log(batch)))


def read_store(store: dict[str, Any], assumptions: Assumptions) -> StoreFigures:
    """The store figures the model uses, from store.json."""
    pg = store["postgres"]
    best = max(pg["writes"], key=lambda r: float(r["results_per_s"]))
    at = _run_at(pg["writes"], assumptions.sink_batch)
    sqlite_at = _run_at(store["sqlite"]["writes"], assumptions.sink_batch)
    feed = pg["feed_read"]
    server = pg["server"]
    m = store["machine"]
    return StoreFigures(
        date=m["date"],
        machine=f"{m['cores']} cores ({m['cpu']})",
        command=store["command"],
        smoke=bool(store["smoke"]),
        server=(
            f"PostgreSQL {server['server_version']}, fsync {server['fsync']}, synchronous_commit "
            f"{server['synchronous_commit']}"
        ),
        prediction_record_bytes=int(store["prediction_record_bytes"]),
        pg_write_ceiling=float(best["results_per_s"]),
        pg_write_ceiling_batch=int(best["batch_size"]),
        pg_client_ms=float(at["client_cpu_ms_per_result"]),
        pg_server_ms=at.get("server_cpu_ms_per_result"),
        sqlite_write_ceiling=max(float(r["results_per_s"]) for r in store["sqlite"]["writes"]),
        sqlite_client_ms=float(sqlite_at["client_cpu_ms_per_result"]),
        notifications_per_s=max(float(r["notifications_per_s"]) for r in pg["notify"]),
        listener_results_per_s=max(float(r["listener_results_per_s"]) for r in pg["notify"]),
        listener_ms_by_batch={
            int(r["batch_size"]): float(r["listener_cpu_ms_per_result"])
            for r in pg["notify"]
            if "listener_cpu_ms_per_result" in r
        },
        feed_results_per_s=float(feed["results_per_s"]),
        feed_client_ms=float(feed["client_cpu_ms_per_result"]),
        feed_server_ms=feed.get("server_cpu_ms_per_result"),
        sse_kb_per_stream=float(store["sse"]["per_stream_kb"]),
    )


def read_inputs(pipeline: dict[str, Any], store: dict[str, Any], assumptions: Assumptions) -> Measured:
    """The measured inputs: the CPU per image of each role at the busiest clean sweep level, the model's own
    cost, the round trip there, each Kafka client's CPU at saturation (when the report has `clients`), and
    the store's figures."""
    level = pick_level(pipeline)
    model = pipeline.get("model", {})
    model_ms = model.get("model_cpu_ms_per_image", {})
    batch_key = str(model.get("best_batch_size", assumptions.inference_batch))
    clients = {
        str(lv["kafka_client"]): role_cpu_ms(lv["cpu_s_per_image"])
        for lv in pipeline.get("clients") or []
        # The default guarantee's figures: the report also measures each client with at-least-once.
        if "kafka_client" in lv
        and "cpu_s_per_image" in lv
        and lv.get("processing_guarantee", "exactly-once") == "exactly-once"
    }
    m = pipeline["machine"]
    fraction = level.get("fraction_of_saturation")
    return Measured(
        pipeline_date=m["date"],
        pipeline_machine=f"{m['cores']} cores ({m['cpu']})",
        pipeline_smoke=bool(pipeline.get("smoke", False)),
        level=f"{fraction}x saturation" if fraction is not None else "sweep",
        level_images_per_s=float(level["completed_images_per_s"]),
        cpu_ms=role_cpu_ms(level["cpu_s_per_image"]),
        load_generator_ms=float(level["cpu_s_per_image"].get("load generator", 0.0)) * 1000,
        model_ms_per_image=float(model_ms[batch_key]) if batch_key in model_ms else None,
        ceiling_images_per_s=model.get("ceiling_images_per_s"),
        round_trip_p99_s=float(level["round_trip_ms"]["p99"]) / 1000,
        broker_cores=sorted(
            (
                float(lv["completed_images_per_s"]),
                float(lv["cpu_s_per_image"].get("broker", 0.0)) * float(lv["completed_images_per_s"]),
            )
            for lv in clean_levels(pipeline)
        ),
        clients=clients,
        store=read_store(store, assumptions),
    )


# --- the model ----------------------------------------------------------------------------------------------


def machines_for(cores: float, a: Assumptions) -> int:
    """Machines of `a.cores_per_machine` cores, each busy at most `a.utilisation`, for this much CPU."""
    return max(1, math.ceil(cores / (a.cores_per_machine * a.utilisation) - 1e-9))


def round_up(n: int, multiple: int) -> int:
    return -(-n // max(1, multiple)) * max(1, multiple)


def requests_per_image(
    brokers: int,
    inference_batch: int,
    images_per_upload: int,
    sink_batch: float,
    sink_commits_per_image: float,
) -> dict[str, float]:
    """Broker requests per image with exactly-once processing (modelled from how the clients batch).

    - API: one Produce per broker that leads a partition of the upload's images (dealt to partitions in turn).
    - Inference, per polled batch: a Fetch, AddPartitionsToTxn, a Produce per broker leading the batch's
      prediction partitions, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, and the coordinator's WriteTxnMarkers
      to each of those brokers and the offsets' one.
    - Sink: a Fetch per poll, and an offset commit every COMMIT_INTERVAL_MS.
    """
    leaders = min(inference_batch, brokers)
    per_batch = 1 + 1 + leaders + 1 + 1 + 1 + min(leaders + 1, brokers)
    api = min(images_per_upload, brokers) / images_per_upload
    inference = per_batch / inference_batch
    sink = 1 / sink_batch + sink_commits_per_image
    return {"api": api, "inference": inference, "sink": sink, "total": api + inference + sink}


def measured_requests_per_image(m: Measured, a: Assumptions) -> dict[str, float]:
    """The same model at the measured configuration: one broker, the sink polling one transaction's
    predictions at a time, committing every COMMIT_INTERVAL_MS."""
    commits = 1 / (COMMIT_INTERVAL_S * m.level_images_per_s)
    return requests_per_image(1, a.inference_poll, a.images_per_upload, a.inference_poll, commits)


def at_least_once_requests_per_image(a: Assumptions) -> float:
    """The model for the configuration whose requests were counted once (at-least-once, a commit after every
    batch, one broker): a check of the model against a measurement. Polls were model calls then."""
    api = 1 / a.images_per_upload
    inference = (1 + 1 + 1) / a.inference_batch  # fetch, produce, commit
    sink = (1 + 1) / a.inference_batch  # fetch, commit, per transaction's worth of predictions
    return api + inference + sink


@dataclass(frozen=True)
class BrokerTraffic:
    """Bytes per image through the brokers (modelled from record sizes, RF and the consumer groups)."""

    record_bytes: int
    prediction_bytes: int
    replication_factor: int
    images_groups: int
    predictions_groups: int

    @property
    def written(self) -> int:
        """Into the brokers: each record from its producer, and again on every follower."""
        return self.replication_factor * (self.record_bytes + self.prediction_bytes)

    @property
    def read(self) -> int:
        """Out of the brokers: to every follower, and once per consumer group."""
        followers = (self.replication_factor - 1) * (self.record_bytes + self.prediction_bytes)
        return (
            followers
            + self.images_groups * self.record_bytes
            + self.predictions_groups * self.prediction_bytes
        )

    @property
    def handled(self) -> int:
        return self.written + self.read


def traffic(a: Assumptions, record_bytes: int, prediction_bytes: int, rf: int | None = None) -> BrokerTraffic:
    return BrokerTraffic(
        record_bytes,
        prediction_bytes,
        a.replication_factor if rf is None else rf,
        a.images_consumer_groups,
        a.predictions_consumer_groups,
    )


@dataclass(frozen=True)
class Limit:
    """A ceiling that adding machines of a role does not raise; `use` > 1 means it is exceeded."""

    name: str
    demand: float
    capacity: float
    unit: str
    change: str

    @property
    def use(self) -> float:
        return self.demand / self.capacity if self.capacity > 0 else math.inf


@dataclass
class Plan:
    """What one rate needs."""

    rate: float
    by_reference: bool
    cpu_ms: dict[str, float]
    cores: dict[str, float] = field(default_factory=dict)
    machines: dict[str, int] = field(default_factory=dict)
    consumers: int = 0
    sink_replicas: int | None = None  # None: no number of replicas keeps up (the feed alone fills one)
    sink_replicas_without_feed: int = 0  # replicas for their own work alone (a feed that reads only theirs)
    images_partitions: int = 0
    predictions_partitions: int = 0
    brokers_by: dict[str, int] = field(default_factory=dict)
    broker_bytes_in: float = 0.0
    broker_bytes_out: float = 0.0
    broker_stored_bytes: float = 0.0
    requests: dict[str, float] = field(default_factory=dict)
    postgres_cores: float | None = None
    notifications_per_s: float = 0.0
    streams: float = 0.0
    long_streams: float = 0.0
    stream_mb_per_replica: float = 0.0
    long_stream_mb_per_replica: float = 0.0
    sqlite_capacity: float = 0.0
    store_write_ceiling: float = 0.0
    limits: list[Limit] = field(default_factory=list)

    @property
    def brokers(self) -> int:
        return max(self.brokers_by.values())

    @property
    def total_machines(self) -> int | None:
        """Every role's machines; None when no number of sink replicas keeps up."""
        if self.sink_replicas is None:
            return None
        return sum(self.machines.values())

    @property
    def machines_but_sink(self) -> int:
        return sum(n for role, n in self.machines.items() if role != "sink")

    @property
    def sqlite(self) -> Limit:
        """The ceiling of `make run`'s store, which every plan here has already replaced by PostgreSQL."""
        return self.limits[0]

    def binding(self) -> Limit:
        """Of the ceilings of the planned system (PostgreSQL store), the one nearest to (or furthest past) its
        planned share."""
        return max(self.limits[1:], key=lambda lim: lim.use)


def sink_own_ms(m: Measured) -> float:
    """A PostgreSQL sink replica's CPU per image it consumes: the measured SQLite sink's, with the SQLite write
    swapped for a PostgreSQL one (both measured by store_bench at the assumed batch)."""
    s = m.store
    return max(0.0, m.cpu_ms["sink"] - s.sqlite_client_ms + s.pg_client_ms)


def feed_capacity(m: Measured, a: Assumptions) -> float:
    """The most results/s all replicas together may store, planned: one listener thread's read rate, or the
    rate at which reading them all takes a replica's whole planned CPU, whichever is lower."""
    s = m.store
    by_cpu = (
        a.cores_per_machine * a.utilisation * 1000 / s.feed_client_ms if s.feed_client_ms > 0 else math.inf
    )
    return min(s.feed_results_per_s * a.utilisation, by_cpu)


def sink_replicas_for(rate: float, m: Measured, a: Assumptions, streams: float) -> int | None:
    """Replicas such that each does its share of consuming, storing and streaming, plus reading every
    result of every replica from the feed; None when the feed alone fills a replica."""
    per_replica = a.cores_per_machine * a.utilisation
    feed = rate * m.store.feed_client_ms / 1000
    if feed >= per_replica:
        return None
    own = rate * sink_own_ms(m) / 1000
    by_cpu = max(1, math.ceil(own / (per_replica - feed) - 1e-9))
    by_streams = math.ceil(streams / (a.max_sse_connections * a.utilisation))
    return max(by_cpu, by_streams)


def plan(rate: float, m: Measured, a: Assumptions, *, by_reference: bool = False) -> Plan:
    """Machines, partitions, broker traffic and the ceilings for `rate` images/s."""
    s = m.store
    record = a.reference_record_bytes if by_reference else a.image_record_bytes
    p = Plan(rate=rate, by_reference=by_reference, cpu_ms=dict(m.cpu_ms))
    p.cpu_ms["sink"] = sink_own_ms(m)
    uploads = rate / a.images_per_upload
    p.streams = uploads * m.round_trip_p99_s
    p.long_streams = uploads * a.long_stream_s

    p.cores["api"] = rate * m.cpu_ms["api"] / 1000
    p.cores["inference"] = rate * m.cpu_ms["inference"] / 1000
    p.machines["api"] = machines_for(p.cores["api"], a)
    p.machines["inference"] = machines_for(p.cores["inference"], a)
    p.consumers = p.machines["inference"] * a.cores_per_machine  # one consumer per core, as measured best

    p.sink_replicas = sink_replicas_for(rate, m, a, p.streams)
    p.sink_replicas_without_feed = machines_for(rate * sink_own_ms(m) / 1000, a)
    replicas = p.sink_replicas or 1
    p.cores["sink"] = rate * (sink_own_ms(m) + replicas * s.feed_client_ms) / 1000
    p.machines["sink"] = replicas

    # Brokers: by CPU (the measured broker's, scaled by requests or bytes per image, whichever grew more), by
    # network, by disk for the retention; the request model depends on how many brokers lead partitions.
    flow = traffic(a, record, s.prediction_record_bytes)
    measured_flow = traffic(a, a.image_record_bytes, s.prediction_record_bytes, rf=1)
    p.broker_bytes_in = rate * flow.written
    p.broker_bytes_out = rate * flow.read
    p.broker_stored_bytes = (
        rate
        * a.replication_factor
        * (record * a.images_retention_s + s.prediction_record_bytes * a.predictions_retention_s)
    )
    baseline = measured_requests_per_image(m, a)["total"]
    nic = a.nic_bytes_per_s * a.utilisation
    p.brokers_by = {
        "replication": a.replication_factor,
        "network": math.ceil(max(p.broker_bytes_in, p.broker_bytes_out) / nic - 1e-9),
        "disk": math.ceil(p.broker_stored_bytes / (a.broker_disk_bytes * a.utilisation) - 1e-9),
    }
    commits = replicas / (COMMIT_INTERVAL_S * rate)
    for _ in range(4):  # the request count settles once there are at least a batch's worth of brokers
        p.requests = requests_per_image(
            p.brokers, a.inference_poll, a.images_per_upload, a.sink_batch, commits
        )
        scale = max(p.requests["total"] / baseline, flow.handled / measured_flow.handled)
        p.cpu_ms["broker"] = m.cpu_ms["broker"] * scale
        p.cores["broker"] = rate * p.cpu_ms["broker"] / 1000
        p.brokers_by["cpu"] = machines_for(p.cores["broker"], a)
    p.machines["broker"] = p.brokers

    p.images_partitions = round_up(
        max(p.consumers, math.ceil(rate * record / a.partition_bytes_per_s), a.min_partitions), p.brokers
    )
    p.predictions_partitions = round_up(max(replicas, a.min_partitions), p.brokers)

    if s.pg_server_ms is not None:
        p.postgres_cores = rate * (s.pg_server_ms + replicas * (s.feed_server_ms or 0.0)) / 1000
    p.machines["postgres"] = 1  # one server, however busy: its CPU is a ceiling (`limits`), not a count
    p.notifications_per_s = rate / a.sink_batch
    p.stream_mb_per_replica = p.streams / replicas * s.sse_kb_per_stream / 1024
    p.long_stream_mb_per_replica = p.long_streams / replicas * s.sse_kb_per_stream / 1024
    p.sqlite_capacity = min(
        a.cores_per_machine * a.utilisation * 1000 / m.cpu_ms["sink"], s.sqlite_write_ceiling * a.utilisation
    )
    p.store_write_ceiling = s.pg_write_ceiling * a.utilisation
    p.limits = limits(p, m, a)
    return p


def limits(p: Plan, m: Measured, a: Assumptions) -> list[Limit]:
    """The ceilings more machines of a role do not raise, with what would have to change past each."""
    s = m.store
    u = a.utilisation
    feed_cpu = p.rate * s.feed_client_ms / 1000
    writes_cores = p.rate * (s.pg_server_ms or 0.0) / 1000
    replicas = p.sink_replicas
    readers = f"{replicas} replicas" if replicas else "each replica"
    found: list[Limit] = [
        Limit(
            "one sink with SQLite",
            p.rate,
            p.sqlite_capacity,
            "images/s",
            f"SQLite is one file, so one sink: a {a.cores_per_machine}-core machine at {u:.0%} stores "
            f"{p.sqlite_capacity:,.0f} images/s ({m.cpu_ms['sink']:.2f} ms of CPU each). Past it: PostgreSQL "
            f"(`RESULTS_STORE_URL=postgresql://...`) and {replicas or 'more'} sink replicas behind a load balancer "
            "(docs/sink.md), the predictions topic with at least as many partitions.",
        ),
        Limit(
            "PostgreSQL writes (one advisory lock)",
            p.rate,
            s.pg_write_ceiling * u,
            "results/s",
            f"writers take turns on one advisory lock from first insert to commit (seq in commit order), so the "
            f"store takes {s.pg_write_ceiling:,.0f} results/s (batches of {s.pg_write_ceiling_batch}) however "
            "many replicas write. Past it: give up the one global seq, e.g. a seq per predictions partition "
            "(the SSE id becomes partition and seq, and Last-Event-ID a list), or several databases by job id; "
            "bigger batches help up to the measured ceiling (the sink polls up to 500).",
        ),
        Limit(
            "the feed of one sink replica (LISTEN, then read every result)",
            p.rate,
            feed_capacity(m, a),
            "results/s",
            f"every replica reads every result any replica stores ({p.rate:,.0f}/s, "
            f"{feed_cpu:.2f} cores of each replica at {s.feed_client_ms:.3f} ms each) to find the few its own "
            f"clients wait for; one listener thread read {s.feed_results_per_s:,.0f}/s, and at "
            f"{feed_capacity(m, a):,.0f}/s the feed takes all of a replica's planned CPU or of its one thread, so "
            "more replicas cannot help. Past it: hand each replica only its clients' results, e.g. NOTIFY on a "
            "channel per job-id shard and LISTEN only to shards with waiting clients, route a client's stream to "
            "a replica by job id, or a pub/sub service (Redis, NATS) keyed by job id.",
        ),
        Limit(
            "one PostgreSQL server's CPU",
            p.postgres_cores or 0.0,
            a.cores_per_machine * u,
            "cores",
            f"the database is one server: writes ({writes_cores:.1f} cores) and every replica's feed reads "
            f"({(p.postgres_cores or 0.0) - writes_cores:.1f} cores: {readers} reading every result) land on "
            "it. Past a machine like the measured one: a bigger server first, and fewer reads per result "
            "(replicas that read only their clients' results, below); then the writes' lock caps it.",
        ),
    ]
    return found


# --- the page -----------------------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:,.{digits}f}"


def _use(use: float) -> str:
    """A share of a planned ceiling: a percentage up to twice it, then a factor."""
    if use < 2:
        return f"{use:.0%}"
    return f"{use:,.0f}x" if use >= 10 else f"{use:.1f}x"


def _of(use: float) -> str:
    """`_use` in a sentence."""
    return f"{_use(use)} {'of its' if use < 2 else 'its'} planned ceiling"


def _bytes(value: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.3g} {unit}" if scaled < 100 else f"{scaled:,.0f} {unit}"
    return f"{value:,.0f} B"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


# Where a row of the per-scale table comes from.
CPU = "measured CPU per image"
MODEL = "modelled"
STORE = "measured (store_bench)"


def scale_table(plans: Sequence[Plan], a: Assumptions) -> list[str]:
    """One column per scale: the machines of each role, the partitions, the broker and store figures, each
    row saying what it rests on."""
    c = a.cores_per_machine

    def row(label: str, basis: str, cell: Any) -> list[str]:
        return [label, basis, *(cell(p) for p in plans)]

    def sink(p: Plan) -> str:
        if p.sink_replicas is None:
            return (
                f"**none keeps up** (the feed alone fills a replica; {p.sink_replicas_without_feed:,} if each "
                "read only its own clients' results)"
            )
        return f"{p.sink_replicas:,} ({_n(p.cores['sink'], 1)} cores busy)"

    def total(p: Plan) -> str:
        if p.total_machines is None:
            return f"{p.machines_but_sink:,} + the sink's"
        return f"**{p.total_machines:,}**"

    def long_replicas(p: Plan) -> str:
        return _n(math.ceil(p.long_streams / (a.max_sse_connections * a.utilisation)))

    def memory(p: Plan) -> str:
        if p.sink_replicas is None:
            return "n/a"
        return f"{_n(p.stream_mb_per_replica, 1)} / {_n(p.long_stream_mb_per_replica, 1)} MB"

    brokers = "modelled bytes and requests, measured broker CPU"
    rows = [
        row("API machines (cores busy)", CPU, lambda p: f"{p.machines['api']:,} ({_n(p.cores['api'], 1)})"),
        row(
            "inference machines (consumers, cores busy)",
            CPU,
            lambda p: f"{p.machines['inference']:,} ({p.consumers:,}, {_n(p.cores['inference'], 1)})",
        ),
        row("sink replicas, PostgreSQL store", f"{CPU}, {STORE}", sink),
        row(
            "brokers: by CPU / network / disk / RF -> brokers",
            brokers,
            lambda p: (
                f"{p.brokers_by['cpu']:,} / {p.brokers_by['network']:,} / {p.brokers_by['disk']:,} / "
                f"{p.brokers_by['replication']} -> **{p.brokers:,}**"
            ),
        ),
        row("PostgreSQL server (cores busy)", STORE, lambda p: f"1 ({_n(p.postgres_cores, 1)})"),
        row(f"**machines in all** ({c} cores each)", "", total),
        row(
            "partitions: images / predictions",
            f"{MODEL} (one per consumer or replica)",
            lambda p: f"{p.images_partitions:,} / {p.predictions_partitions:,}",
        ),
        row(
            "broker bytes in / out per s",
            MODEL,
            lambda p: f"{_bytes(p.broker_bytes_in)} / {_bytes(p.broker_bytes_out)}",
        ),
        row("broker disk for the retention", MODEL, lambda p: _bytes(p.broker_stored_bytes)),
        row(
            "broker requests per image (per s)",
            MODEL,
            lambda p: f"{p.requests['total']:.2f} ({_n(p.requests['total'] * p.rate)})",
        ),
        row("broker CPU ms per image", brokers, lambda p: f"{p.cpu_ms['broker']:.2f}"),
        row(
            f"store writes per s (planned ceiling at {a.utilisation:.0%})",
            STORE,
            lambda p: f"{_n(p.rate)} ({_n(p.store_write_ceiling)})",
        ),
        row("NOTIFYs per s, to every replica", MODEL, lambda p: _n(p.notifications_per_s)),
        row(
            "SSE streams open: typical / long-lived",
            "measured round trip, modelled lifetime",
            lambda p: f"{_n(p.streams)} / {_n(p.long_streams)}",
        ),
        row("SSE memory per replica: typical / long-lived", f"{STORE}, modelled streams", memory),
        row(
            f"sink replicas for long-lived streams (MAX_SSE_CONNECTIONS at {a.utilisation:.0%})",
            MODEL,
            long_replicas,
        ),
        row("binding limit (demand / planned ceiling)", "", lambda p: _binding_cell(p, a)),
    ]
    return _table(["", "from", *(f"{p.rate:,.0f} images/s" for p in plans)], rows)


def _binding_cell(p: Plan, a: Assumptions) -> str:
    limit = p.binding()
    mark = "**" if limit.use > 1 else ""
    cell = f"{mark}{limit.name}{mark} ({_use(limit.use)})"
    if p.sqlite.use > 1:
        cell = f"**{p.sqlite.name}** ({_use(p.sqlite.use)}), then {cell}"
    return cell


def limits_section(by_value: Sequence[Plan], by_reference: Sequence[Plan], a: Assumptions) -> list[str]:
    """Per scale: every ceiling's use, the binding one and what would have to change there, and where the
    machines go."""
    lines: list[str] = []
    for p, ref in zip(by_value, by_reference, strict=True):
        binding = p.binding()
        lines += [f"### {p.rate:,.0f} images/s", ""]
        rows = [
            [
                ("**" + lim.name + "**") if lim is binding else lim.name,
                f"{_n(lim.demand, 1 if lim.unit == 'cores' else 0)} {lim.unit}",
                f"{_n(lim.capacity, 1 if lim.unit == 'cores' else 0)} {lim.unit}",
                _use(lim.use) + (" (exceeded)" if lim.use > 1 else ""),
            ]
            for lim in p.limits
        ]
        lines += _table(["ceiling", "demand", f"planned ceiling ({a.utilisation:.0%})", "use"], rows)
        lines.append("")
        then = "first"
        if p.sqlite.use > 1:
            lines.append(
                f"- **`make run`'s store binds first: {p.sqlite.name}** ({_of(p.sqlite.use)}): "
                f"{p.sqlite.change} The figures here assume that change."
            )
            then = "next"
        if binding.use > 1:
            lines.append(f"- **Binds {then}: {binding.name}** ({_of(binding.use)}): {binding.change}")
        else:
            lines.append(
                f"- **Then nothing binds up to this scale.** The nearest ceiling is {binding.name} "
                f"({_use(binding.use)}), reached at about {p.rate / binding.use:,.0f} images/s: {binding.change}"
            )
        for lim in p.limits[1:]:
            if lim.use > 1 and lim is not binding:
                lines.append(f"- Also past its ceiling: **{lim.name}** ({_use(lim.use)}): {lim.change}")
        lines.append(f"- {cost_sentence(p, ref, a)}")
        lines.append("")
    return lines


def cost_sentence(p: Plan, ref: Plan, a: Assumptions) -> str:
    """Where the machines go at this scale, what sizes the brokers, and what images by reference change."""
    total = p.total_machines
    role, most = max(p.machines.items(), key=lambda item: item[1])
    share = f" of {total:,}" if total else ""
    sized_by = max(("cpu", "network", "disk", "replication"), key=lambda k: p.brokers_by[k])
    text = (
        f"Most machines go to {role} ({most:,}{share}). The brokers are sized by {sized_by} ({p.brokers:,}: "
        f"{_bytes(p.broker_bytes_in)}/s in, {_bytes(p.broker_stored_bytes)} on disk"
    )
    text += (
        f"); with images by reference {ref.brokers:,} brokers ({_bytes(ref.broker_bytes_in)}/s in, "
        f"{_bytes(ref.broker_stored_bytes)} on disk), and the object store takes {p.rate:,.0f} PUTs and as many "
        f"GETs per second"
    )
    prefixes = math.ceil(p.rate / (OBJECT_STORE_PUTS_PER_PREFIX * a.utilisation))
    if prefixes > 1:
        text += (
            f" (S3 documents {OBJECT_STORE_PUTS_PER_PREFIX:,} PUTs/s per key prefix: {prefixes}+ prefixes)"
        )
    return text + "."


def _total(p: Plan) -> str:
    return (
        f"{p.total_machines:,}" if p.total_machines is not None else f"{p.machines_but_sink:,} + the sink's"
    )


def reference_table(by_value: Sequence[Plan], by_reference: Sequence[Plan]) -> list[str]:
    rows = []
    for v, r in zip(by_value, by_reference, strict=True):
        rows.append(
            [
                f"{v.rate:,.0f}",
                f"{v.brokers:,} -> {r.brokers:,}",
                f"{_bytes(v.broker_bytes_in)} -> {_bytes(r.broker_bytes_in)}",
                f"{_bytes(v.broker_stored_bytes)} -> {_bytes(r.broker_stored_bytes)}",
                f"{v.images_partitions:,} -> {r.images_partitions:,}",
                f"{_total(v)} -> {_total(r)}",
            ]
        )
    head = [
        "images/s",
        "brokers",
        "broker bytes in per s",
        "broker disk",
        "images partitions",
        "machines in all",
    ]
    return _table(head, rows)


def clients_table(m: Measured, a: Assumptions) -> list[str]:
    """Each Kafka client library's CPU per image at saturation, and the machines that would make."""
    if not m.clients:
        return [
            "The pipeline report has no `clients` section (it predates the comparison of the Kafka client "
            "libraries, when kafka-python was the only one), so the model uses the sweep's figures alone. "
            "`make bench` now measures both; `make capacity` then adds a table per library here."
        ]
    rows = []
    for name, cpu in m.clients.items():
        variant = replace(m, cpu_ms=cpu)
        plans = [plan(rate, variant, a) for rate in SCALES]
        rows.append(
            [
                name,
                *(f"{cpu[role]:.2f}" for role in ROLES),
                *(_total(p) for p in plans),
            ]
        )
    head = ["KAFKA_CLIENT", *(f"{r} ms/img" for r in ROLES), *(f"machines at {s:,}/s" for s in SCALES)]
    return [
        "The same model with each Kafka client library's CPU per image, measured at saturation in the same "
        "pipeline run (closed loop; the sweep's level above ran on the default `KAFKA_CLIENT` of that run):",
        "",
        *_table(head, rows),
    ]


def hosts_note(m: Measured) -> list[str]:
    """A warning when the two reports were measured on different hosts."""
    if m.pipeline_machine == m.store.machine:
        return []
    return [
        f"The two reports come from different hosts ({m.pipeline_machine}; {m.store.machine}): where the model "
        "puts their figures side by side (the sink's SQLite write swapped for PostgreSQL's), it carries that "
        "difference too.",
        "",
    ]


def broker_sentence(m: Measured) -> str:
    """How much of the broker's CPU per image followed the load across the sweep's clean levels."""
    if len(m.broker_cores) < 2:
        return ""
    (low_rate, low_cores), (high_rate, high_cores) = m.broker_cores[0], m.broker_cores[-1]
    if high_rate <= low_rate:
        return ""
    marginal = (high_cores - low_cores) / (high_rate - low_rate) * 1000
    text = (
        f"The broker used {low_cores:.2f} cores at {low_rate:.0f} images/s and {high_cores:.2f} at "
        f"{high_rate:.0f}: {marginal:.2f} ms per added image against {m.cpu_ms['broker']:.2f} on average"
    )
    if marginal < 0.5 * m.cpu_ms["broker"]:
        return text + (
            ", so most of its CPU is fixed cost (idle polls, heartbeats, commits) and the broker rows below, "
            "which scale the average, are an upper bound."
        )
    return text + "."


def render_page(m: Measured, a: Assumptions) -> str:
    """docs/scaling.md: the model, its inputs, the table per scale, the binding limits and what changes."""
    s = m.store
    by_value = [plan(rate, m, a) for rate in SCALES]
    by_reference = [plan(rate, m, a, by_reference=True) for rate in SCALES]
    measured_requests = measured_requests_per_image(m, a)
    first = by_value[0]
    at_scale = by_value[-1]
    warnings = []
    if m.pipeline_smoke or s.smoke:
        warnings = [
            "",
            "> **These inputs come from a smoke run**: rerun the benchmarks before reading the figures.",
            "",
        ]
    cpu_rows = [
        [role, f"{m.cpu_ms[role]:.2f}", "measured" if role != "sink" else "measured (SQLite store)"]
        for role in ROLES
    ]
    cpu_rows.append(
        ["sink with PostgreSQL", f"{sink_own_ms(m):.2f}", "modelled: SQLite's write swapped for PostgreSQL's"]
    )
    cpu_rows.append(["load generator (not in the model)", f"{m.load_generator_ms:.2f}", "measured"])
    if m.model_ms_per_image is not None:
        cpu_rows.append(
            ["the model alone, of inference", f"{m.model_ms_per_image:.2f}", "measured (model only)"]
        )
    lines = [
        "# Scaling: what 1,000, 10,000 and 100,000 images/s would take",
        "",
        "<!-- Generated by `python -m benchmarks.capacity` (`make capacity`) from docs/benchmarks/pipeline.json and "
        "docs/benchmarks/store.json; edit the template in benchmarks/capacity.py, not this page. -->",
        "",
        *warnings,
        "Everything here is arithmetic on what two benchmarks measured on one small machine; nothing was run at "
        "these rates. Read the figures as orders of magnitude and the limits as the order in which things break. "
        "Each input below says whether it was **measured** (and where) or **modelled** (assumed).",
        "",
        "## The model",
        "",
        f"- **CPU per image, per role.** Each process's CPU-seconds per image at the busiest level of "
        f"`make bench`'s sweep that still kept up ({m.level}, {m.level_images_per_s:.0f} images/s). A role needs "
        f"rate x CPU per image cores, on machines of {a.cores_per_machine} cores each planned at "
        f"{a.utilisation:.0%} busy. The figures include each process's idle costs (polls, heartbeats), so they "
        "over-state a busier machine (the broker's most: see its note below).",
        "- **Inference**: one consumer per core (2 consumers x 1 thread was as fast as any split on 2 cores); the "
        "images topic needs at least one partition per consumer, and one per "
        f"{_bytes(a.partition_bytes_per_s)}/s of records.",
        "- **Sink**: with PostgreSQL, each replica does its share of consuming, storing and streaming, and also "
        "reads *every* result any replica stores (the LISTEN/NOTIFY feed, docs/sink.md), so its feed grows with "
        "the total rate, not with its share. The feed is costed at its page-read cost: on a notification the "
        "listener reads everything past its last seq, so under load notifications coalesce into pages (one "
        "small transaction per notification costs far more per result, in the inputs below). The predictions "
        "topic needs a partition per replica.",
        "- **Brokers**: the most of four counts: CPU (the measured broker's CPU per image, scaled by the "
        "modelled requests or bytes per image, whichever grew more from the measured set-up: one broker, RF 1), "
        "network (bytes in or out per broker), disk (the topics' retention, replicated) and the replication "
        "factor.",
        "- **Ceilings**: what adding machines does not raise: one SQLite file (`make run`'s store: one sink), "
        "the PostgreSQL store's one write lock, one replica's feed, one database server. Past the SQLite sink "
        "the tables assume PostgreSQL; the limit that binds is then the ceiling with the highest demand over "
        "its planned share.",
        "",
        "## Inputs",
        "",
        f"**Measured by `make bench`** (`python -m benchmarks.pipeline_bench`, docs/benchmarks/pipeline.json) on "
        f"{m.pipeline_date}, {m.pipeline_machine}, `make run`'s defaults (one broker, RF 1, SQLite store). CPU ms "
        f"per image at {m.level}:",
        "",
        *_table(["role", "CPU ms per image", "source"], cpu_rows),
        "",
        broker_sentence(m),
        "",
        f"Round trip there: p99 {m.round_trip_p99_s * 1000:.0f} ms, used as a typical stream's lifetime."
        + (
            f" Model-only ceiling in that run: {m.ceiling_images_per_s:.0f} images/s."
            if m.ceiling_images_per_s
            else ""
        ),
        "",
        f"**Measured by `{s.command}`** (docs/benchmarks/store.json, [benchmarks/store.md](benchmarks/store.md)) "
        f"on {s.date}, {s.machine}, {s.server}:",
        "",
        *_table(
            ["figure", "value"],
            [
                [
                    "PostgreSQL store writes, one writer (= all replicas: one lock)",
                    f"{s.pg_write_ceiling:,.0f} results/s (batches of {s.pg_write_ceiling_batch})",
                ],
                [
                    f"sink CPU per result written, batches of {a.sink_batch}: PostgreSQL / SQLite",
                    f"{s.pg_client_ms:.3f} / {s.sqlite_client_ms:.3f} ms",
                ],
                [
                    f"PostgreSQL server CPU per result written (batches of {a.sink_batch})",
                    f"{_n(s.pg_server_ms, 3)} ms",
                ],
                ["SQLite store writes, one writer", f"{s.sqlite_write_ceiling:,.0f} results/s"],
                ["NOTIFYs a second replica received (writer flat out)", f"{s.notifications_per_s:,.0f}/s"],
                [
                    "results the second replica's listener handed over live",
                    f"{s.listener_results_per_s:,.0f}/s",
                ],
                [
                    "its CPU per result, by the writer's batch (one NOTIFY and one read per batch)",
                    ", ".join(f"{ms:.3f} ms at {b}" for b, ms in sorted(s.listener_ms_by_batch.items()))
                    or "n/a",
                ],
                [
                    "one replica's feed read path alone (pages of 500)",
                    f"{s.feed_results_per_s:,.0f} results/s, {s.feed_client_ms:.3f} ms CPU each "
                    f"(+{_n(s.feed_server_ms, 3)} ms on the server)",
                ],
                ["SSE memory per open stream (a sink process's RSS)", f"{s.sse_kb_per_stream:.1f} KB"],
                ["a prediction record", f"{s.prediction_record_bytes} bytes"],
            ],
        ),
        "",
        *hosts_note(m),
        "**Modelled** (assumed; change them in `Assumptions` in benchmarks/capacity.py):",
        "",
        *_table(
            ["assumption", "value"],
            [
                [
                    "machine",
                    f"{a.cores_per_machine} cores, planned at {a.utilisation:.0%} busy (so is every ceiling)",
                ],
                [
                    "image record",
                    f"{_bytes(a.image_record_bytes)} (by reference: {a.reference_record_bytes} bytes)",
                ],
                ["replication factor", f"{a.replication_factor} (production; `make run` uses 1)"],
                [
                    "consumer groups reading images / predictions",
                    f"{a.images_consumer_groups} / {a.predictions_consumer_groups}",
                ],
                ["images per upload (one SSE stream each)", str(a.images_per_upload)],
                ["inference model call (BATCH_MAX_SIZE, full at saturation)", str(a.inference_batch)],
                [
                    "inference poll and transaction (POLL_MAX_IMAGES, full at saturation)",
                    str(a.inference_poll),
                ],
                ["sink batch at scale (which store figures are used)", str(a.sink_batch)],
                ["broker network", f"{_bytes(a.nic_bytes_per_s)}/s each way (10 Gbit/s)"],
                ["broker disk", f"{_bytes(a.broker_disk_bytes)} usable"],
                [
                    "retention: images / predictions",
                    f"{a.images_retention_s / 3600:.0f} h (TOPIC_IMAGES_RETENTION_MS) / "
                    f"{a.predictions_retention_s / 86400:.0f} days (broker default)",
                ],
                ["one partition takes in", f"{_bytes(a.partition_bytes_per_s)}/s"],
                ["SSE streams per replica (MAX_SSE_CONNECTIONS)", f"{a.max_sse_connections:,}"],
                ["a long-lived stream", f"{a.long_stream_s:.0f} s"],
                ["broker requests per image", "the model below"],
            ],
        ),
        "",
        "**Broker requests per image** (modelled from how the clients batch, exactly-once): the API sends one "
        "Produce per broker leading one of an upload's partitions; an inference consumer sends, per batch, a "
        "Fetch, AddPartitionsToTxn, a Produce per broker leading the batch's prediction partitions, "
        "AddOffsetsToTxn, TxnOffsetCommit and EndTxn, and the coordinator writes a marker to each of those "
        "brokers; the sink fetches once per poll and commits every 200 ms. At the measured set-up (one broker) "
        f"that is {measured_requests['total']:.2f} per image (API {measured_requests['api']:.2f}, inference "
        f"{measured_requests['inference']:.2f}, sink {measured_requests['sink']:.2f}); with {at_scale.brokers} "
        f"brokers {at_scale.requests['total']:.2f}. The one count we have: 1.8 requests per image with the "
        "broker's request log, at-least-once with a commit after every batch (2026-11-24, docs/benchmarks.md), "
        f"where this model says {at_least_once_requests_per_image(a):.2f}; the rest are polls that found "
        "nothing, heartbeats and metadata.",
        "",
        "**Broker bytes per image** (modelled): an image record is written once and copied to RF-1 followers, "
        "then read once per consumer group; a prediction the same. In: RF x (image + prediction) = "
        f"{_bytes(first.broker_bytes_in / first.rate)}; out: (RF-1) x (image + prediction) + one read of each = "
        f"{_bytes(first.broker_bytes_out / first.rate)}.",
        "",
        "## Per scale",
        "",
        *scale_table(by_value, a),
        "",
        "Machines in all counts the roles above and one database server; load balancers, object storage and "
        "monitoring come on top. Typical streams live a round trip; long-lived ones "
        f"{a.long_stream_s:.0f} s. 'none keeps up' means each replica would spend all its planned CPU reading the "
        "feed before doing any work of its own: the number of replicas cannot fix that.",
        "",
        "## What binds, and what would have to change",
        "",
        *limits_section(by_value, by_reference, a),
        "### Images by reference",
        "",
        "The same scales with each image in object storage and only its key in the record (the consumer then "
        "GETs the image):",
        "",
        *reference_table(by_value, by_reference),
        "",
        "## Kafka client libraries",
        "",
        *clients_table(m, a),
        "",
        "## Regenerating",
        "",
        "`make bench` (~5 min) rewrites docs/benchmarks/pipeline.json, `make bench-store` (`python -m "
        "benchmarks.store_bench`, ~1 min) docs/benchmarks/store.json, and `make capacity` this page from both. "
        "Neither benchmark should run beside other CPU-heavy work: the figures are CPU per image on a shared "
        "2-core machine.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", type=Path, default=PIPELINE_JSON, help="make bench's pipeline.json")
    parser.add_argument("--store", type=Path, default=STORE_JSON, help="store_bench's store.json")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the page to write")
    args = parser.parse_args(argv)
    for path, command in ((args.pipeline, "make bench"), (args.store, "python -m benchmarks.store_bench")):
        if not path.exists():
            print(f"{path} not found: run `{command}` first", file=sys.stderr)
            return 1
    assumptions = Assumptions()
    measured = read_inputs(
        json.loads(args.pipeline.read_text()), json.loads(args.store.read_text()), assumptions
    )
    args.output.write_text(render_page(measured, assumptions))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
