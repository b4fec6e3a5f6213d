"""Results-store benchmark: what the sink's stores and its live streams can take on this machine.

Run `python -m benchmarks.store_bench` (about a minute; `--smoke` about 20 s, written to a temporary folder).
It measures

1. the PostgreSQL store's sustained write rate, written as the sink writes: `PostgresResultStore.write_batch`
   with batches of 1, 16 and 100 realistic predictions (the sink writes one poll's predictions, up to 500, per
   call), on a server that keeps PostgreSQL's durability defaults (a commit waits for its WAL flush), with the
   client's and the server's CPU per result; the same for the SQLite store (`synchronous=FULL`) for comparison;
2. LISTEN/NOTIFY: a second replica in a process of its own runs the sink's own listener
   (`PostgresResultStore.listen`, results_sink/notify.py) and a plain LISTEN connection while the first writes
   flat out: how many notifications per second it receives, how many results per second its listener hands to
   its hub, and how long after `write_batch` began a result reached it; then the listener's read path alone
   (`results_since`, a page of 500 at a time) on a full table: the most results per second one replica can be fed;
3. SSE memory: a real sink process (`python -m results_sink` as `make run` starts it, SQLite store, on a local
   broker) with 0, then N open streams on `GET /v1/results/{id}/events` for pending jobs: its RSS growth per
   open stream.

Writes docs/benchmarks/store.json and store.md. The PostgreSQL server is `kafka_local.postgres`'s: the one
POSTGRES_URL names, else a throwaway one from Debian's binaries (durable settings, see `LocalPostgres`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the lock (types-psutil)

from benchmarks.model_bench import machine_info
from kafka_local import free_port
from kafka_local.postgres import fresh_database, provide_postgres
from kafka_local.provision import provide_broker
from launcher.system import System, isolated_env
from pipeline_core.events import PredictionEvent, ScoredLabelModel, Timings, encode_prediction
from pipeline_core.jobs import new_job_id
from pipeline_core.logs import configure_logging
from results_sink.store import ResultStore, StoredResult, open_store

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = PROJECT_ROOT / "docs" / "benchmarks"
COMMAND = "python -m benchmarks.store_bench"
BATCH_SIZES = (1, 16, 100)
NOTIFY_BATCH_SIZES = (1, 100)  # one NOTIFY per write_batch: the most notifications, and the most results
SSE_STREAMS = (200, 1000)
SMOKE_SSE_STREAMS = (50, 200)
FEED_PAGE = 500  # results_sink.notify.PAGE: what the listener reads at a time
CATCH_UP_S = 15.0  # how long the listening replica may take to reach the writer's last seq
OPEN_CONCURRENCY = 50  # SSE streams being opened at once
LABELS = ("tabby", "tiger_cat", "Egyptian_cat", "lynx", "Persian_cat")


def make_event(secret: bytes) -> PredictionEvent:
    """A prediction as the inference consumers send it (top 5, timings) for a fresh job id."""
    now = time.time()
    score = 0.87
    top = []
    for n, label in enumerate(LABELS):
        top.append(ScoredLabelModel(label=label, wnid=f"n0212{3045 + n}", index=281 + n, score=score))
        score /= 4
    return PredictionEvent(
        job_id=new_job_id(secret),
        status="done",
        filename="IMG_20261124_142233.jpg",
        label=LABELS[0],
        score=0.87,
        top=tuple(top),
        model_name="efficientnet-lite0",
        model_version="579344248a93",
        runtime="litert",
        timings=Timings(
            received_at=now - 0.05,
            dequeued_at=now - 0.03,
            predicted_at=now - 0.01,
            preprocess_ms=3.9,
            inference_ms=21.7,
            batch_size=4,
        ),
    )


def prediction_record_bytes(secret: bytes) -> int:
    """Bytes of one prediction record on the predictions topic: key, value and headers (names and values)."""
    key, value, headers = encode_prediction(make_event(secret))
    return len(key or b"") + len(value) + sum(len(name) + len(v) for name, v in headers)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 and p99 (and the count) of a sample, rounded for the report."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p99": round(p99, 3), "n": len(ordered)}


def tree_cpu_s(process: psutil.Process | None) -> float:
    """CPU-seconds (user + system) of a process and all its children, those alive now."""
    if process is None:
        return 0.0
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def postgres_server_process(url: str) -> psutil.Process | None:
    """The postmaster of a server on this machine (parent of our backend), or None when it is elsewhere."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        parent = psutil.Process(int(row[0]) if row else -1).parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None
    return parent if parent is not None and "postgres" in parent.name() else None


def postgres_settings(url: str) -> dict[str, str]:
    """The server settings that decide what a commit costs."""
    import psycopg

    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
    settings = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            row = conn.execute(f"SHOW {name}").fetchone()  # a constant name, not input
            settings[name] = str(row[0]) if row else "?"
    return settings


def measure_writes(
    store: ResultStore, batch: int, seconds: float, secret: bytes, server: psutil.Process | None
) -> dict[str, Any]:
    """Write batches of `batch` fresh predictions for `seconds`, one after another, as the sink's consumer
    thread does; only the `write_batch` calls are timed (making the events is not the store's work)."""
    for _ in range(3):  # warm-up: connections, statements, the first pages of the table
        store.write_batch([make_event(secret) for _ in range(batch)])
    written = 0
    write_s = 0.0
    cpu_s = 0.0
    batch_ms: list[float] = []
    server_before = tree_cpu_s(server)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        events = [make_event(secret) for _ in range(batch)]
        cpu_before, before = time.thread_time(), time.perf_counter()
        new = store.write_batch(events)
        took = time.perf_counter() - before
        cpu_s += time.thread_time() - cpu_before
        write_s += took
        batch_ms.append(took * 1000)
        if len(new) != batch:
            raise RuntimeError(f"write_batch stored {len(new)} of {batch} fresh results")
        written += batch
    server_cpu = tree_cpu_s(server) - server_before
    return {
        "batch_size": batch,
        "results": written,
        "batches": len(batch_ms),
        "write_s": round(write_s, 3),
        "results_per_s": round(written / write_s, 1),
        "batches_per_s": round(len(batch_ms) / write_s, 1),
        "batch_ms": percentiles(batch_ms),
        "client_cpu_ms_per_result": round(cpu_s * 1000 / written, 4),
        "server_cpu_ms_per_result": round(server_cpu * 1000 / written, 4) if server is not None else None,
    }


def write_and_wait(
    store: ResultStore, batch: int, seconds: float, secret: bytes
) -> tuple[int, int, float, int]:
    """Write flat out for `seconds`; return (results, transactions, wall seconds, last seq)."""
    written = transactions = last_seq = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        new = store.write_batch([make_event(secret) for _ in range(batch)])
        written += len(new)
        transactions += 1
        last_seq = new[-1].seq
    return written, transactions, time.perf_counter() - started, last_seq


def listening_replica(url: str, pipe: Connection) -> None:
    """A second sink replica's feed, in a process of its own: the sink's listener on its own store, plus a
    plain LISTEN connection that counts notifications. Says "ready", waits for the writer's last seq, waits
    until the listener has handed that seq over (or CATCH_UP_S), then sends its counts back."""
    import psycopg

    from results_sink.notify import CHANNEL
    from results_sink.postgres_store import PostgresResultStore

    store = PostgresResultStore.open(url)
    lock = threading.Lock()
    seen = {"results": 0, "handovers": 0, "last_seq": 0}
    delays_ms: list[float] = []
    first_at = last_at = 0.0

    def on_stored(results: list[StoredResult]) -> None:
        nonlocal first_at, last_at
        now = time.time()
        with lock:
            first_at = first_at or now
            last_at = now
            seen["results"] += len(results)
            seen["handovers"] += 1
            seen["last_seq"] = results[-1].seq
            # stored_at is taken as write_batch begins: this is write + commit + NOTIFY + read, to this hub.
            delays_ms.extend((now - r.stored_at) * 1000 for r in results[:: max(1, len(results) // 20)])

    stop = threading.Event()
    notifications = [0]
    raw = psycopg.connect(url, autocommit=True, application_name="store-bench-listen")
    raw.execute(f"LISTEN {CHANNEL}")

    def count_notifications() -> None:
        while not stop.is_set():
            for _ in raw.notifies(timeout=0.25):
                notifications[0] += 1

    counter = threading.Thread(target=count_notifications, name="notify-counter", daemon=True)
    counter.start()
    feed = store.listen(on_stored)
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    pipe.send("ready")
    target = int(pipe.recv())
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        with lock:
            if seen["last_seq"] >= target:
                break
        time.sleep(0.005)
    # The notifications of the last transactions, which the plain LISTEN may get after the listener read the rows.
    time.sleep(0.3)
    cpu_s = sum(me.cpu_times()[:2]) - cpu_before
    stop.set()
    counter.join(2)
    feed.stop()
    raw.close()
    store.close()
    with lock:
        pipe.send(
            seen
            | {
                "notifications": notifications[0],
                "caught_up": seen["last_seq"] >= target,
                "first_at": first_at,
                "last_at": last_at,
                "delay_ms": percentiles(delays_ms),
                "cpu_s": cpu_s,
            }
        )


def measure_notify(url: str, batch: int, seconds: float, secret: bytes) -> dict[str, Any]:
    """The first replica writes batches of `batch` flat out; the second (another process) LISTENs."""
    from results_sink.postgres_store import PostgresResultStore

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    replica = context.Process(target=listening_replica, args=(url, theirs), name="listening-replica")
    replica.start()
    store = PostgresResultStore.open(url)
    server = postgres_server_process(url)
    try:
        if not ours.poll(60) or ours.recv() != "ready":
            raise RuntimeError("the listening replica did not start")
        server_before = tree_cpu_s(server)
        began = time.time()
        written, transactions, wall_s, last_seq = write_and_wait(store, batch, seconds, secret)
        ours.send(last_seq)
        if not ours.poll(CATCH_UP_S + 30):
            raise RuntimeError("the listening replica did not report")
        seen: dict[str, Any] = ours.recv()
        server_cpu = tree_cpu_s(server) - server_before
    finally:
        store.close()
        replica.join(30)
        if replica.is_alive():
            replica.kill()
    span = max(seen["last_at"] - began, wall_s)
    return {
        "batch_size": batch,
        "writer_results_per_s": round(written / wall_s, 1),
        "transactions": transactions,
        "notifications_received": seen["notifications"],
        "notifications_per_s": round(seen["notifications"] / wall_s, 1),
        "listener_results": seen["results"],
        "listener_results_per_s": round(seen["results"] / span, 1),
        "listener_handovers": seen["handovers"],
        "listener_caught_up": seen["caught_up"],
        "listener_behind_s": round(max(0.0, seen["last_at"] - began - wall_s), 3),
        "delay_ms": seen["delay_ms"],
        "listener_cpu_ms_per_result": round(seen["cpu_s"] * 1000 / max(1, seen["results"]), 4),
        "server_cpu_ms_per_result": (
            round(server_cpu * 1000 / max(1, written), 4) if server is not None else None
        ),
    }


def measure_feed_read(url: str, seconds: float) -> dict[str, Any]:
    """The listener's read path alone on a full table: `results_since` a page at a time, decoded."""
    from results_sink.postgres_store import PostgresResultStore

    store = PostgresResultStore.open(url)
    server = postgres_server_process(url)
    try:
        read = 0
        after = 0
        server_before = tree_cpu_s(server)
        cpu_before, started = time.thread_time(), time.perf_counter()
        while time.perf_counter() - started < seconds:
            page = store.results_since(after, FEED_PAGE)
            if not page:
                after = 0  # read the table again from the start
                continue
            after = page[-1].seq
            read += len(page)
        wall = time.perf_counter() - started
        cpu = time.thread_time() - cpu_before
        server_cpu = tree_cpu_s(server) - server_before
    finally:
        store.close()
    return {
        "page": FEED_PAGE,
        "results": read,
        "results_per_s": round(read / wall, 1),
        "client_cpu_ms_per_result": round(cpu * 1000 / max(1, read), 4),
        "server_cpu_ms_per_result": round(server_cpu * 1000 / max(1, read), 4)
        if server is not None
        else None,
    }


def measure_postgres(seconds: float, secret: bytes) -> dict[str, Any]:
    """Writes per batch size, then LISTEN/NOTIFY with a second replica, then the feed's read path."""
    from results_sink.postgres_store import PostgresResultStore

    with provide_postgres(durable=True) as server_url, fresh_database(server_url) as url:
        report: dict[str, Any] = {"server": postgres_settings(url)}
        server = postgres_server_process(url)
        report["server"]["on_this_machine"] = server is not None
        store = PostgresResultStore.open(url)
        try:
            report["writes"] = []
            for batch in BATCH_SIZES:
                run = measure_writes(store, batch, seconds, secret, server)
                logger.info("postgres, batch %d: %.0f results/s", batch, run["results_per_s"])
                report["writes"].append(run)
        finally:
            store.close()
        report["notify"] = []
        for batch in NOTIFY_BATCH_SIZES:
            run = measure_notify(url, batch, seconds, secret)
            logger.info(
                "notify, batch %d: %.0f notifications/s, %.0f results/s to the second replica",
                batch,
                run["notifications_per_s"],
                run["listener_results_per_s"],
            )
            report["notify"].append(run)
        report["feed_read"] = measure_feed_read(url, min(seconds, 3.0))
        logger.info("feed read: %.0f results/s", report["feed_read"]["results_per_s"])
    return report


def measure_sqlite(seconds: float, secret: bytes, work: Path) -> dict[str, Any]:
    """The SQLite store's writes per batch size (WAL, synchronous=FULL: each commit is on disk)."""
    store = open_store(f"sqlite:///{(work / 'results.db').resolve()}")
    try:
        writes = []
        for batch in BATCH_SIZES:
            run = measure_writes(store, batch, seconds, secret, None)
            logger.info("sqlite, batch %d: %.0f results/s", batch, run["results_per_s"])
            writes.append(run)
    finally:
        store.close()
    return {"writes": writes}


# --- SSE memory ---------------------------------------------------------------------------------------------


class Streams:
    """Open SSE streams to one sink, each a plain socket that sent its GET and read the response head."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: list[asyncio.StreamWriter] = []

    async def open_one(self, job_id: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        request = (
            f"GET /v1/results/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        if not status.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise RuntimeError(f"stream refused: {status!r}")
        while (await asyncio.wait_for(reader.readline(), 30)) not in (b"\r\n", b""):
            pass
        self.open.append(writer)

    async def open_many(self, job_ids: Sequence[str]) -> None:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one(job_id: str) -> None:
            async with gate:
                await self.open_one(job_id)

        await asyncio.gather(*(one(j) for j in job_ids))

    async def close_all(self) -> None:
        for writer in self.open:
            writer.close()
        for writer in self.open:
            with suppress(OSError):
                await writer.wait_closed()
        self.open.clear()


def sse_clients(sink_url: str) -> int:
    """The sink's `sse_clients` gauge."""
    with urllib.request.urlopen(f"{sink_url}/metrics", timeout=5) as response:  # noqa: S310 - our localhost
        text = response.read().decode()
    found = re.search(r"^sse_clients (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else -1


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.1)


def rss_mb(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


@contextmanager
def running_sink(work: Path, secret: str, max_streams: int, log: Path) -> Iterator[System]:
    """A local broker (or KAFKA_BOOTSTRAP_SERVERS) and one sink process as `make run` starts it (no API, no
    consumers: its streams wait for results that never come, which is what an open stream costs)."""
    with ExitStack() as stack:
        bootstrap, _ = stack.enter_context(provide_broker(work / "kafka", try_docker=False))
        out = stack.enter_context(log.open("w", encoding="utf-8"))
        env = isolated_env(f"store-bench-{secrets.token_hex(4)}") | {
            "JOB_ID_SECRET": secret,
            "MAX_SSE_STREAMS_PER_CLIENT": str(max_streams + 100),  # every stream comes from 127.0.0.1
            "MAX_SSE_CONNECTIONS": str(max_streams + 100),
            "MAX_CONNECTIONS": str(max_streams + 1000),
        }
        system = System(
            bootstrap,
            work / "sink",
            api_port=free_port(),
            sink_port=free_port(),
            consumers=0,
            env=env,
            out=out,
        )
        system.data_dir.mkdir(parents=True, exist_ok=True)
        system.create_topics()
        system.start_service("sink")
        try:
            wait_for(lambda: _ready(system.sink_url), 60, "the sink was not ready")
            yield system
        finally:
            system.stop()


def _ready(sink_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{sink_url}/readyz", timeout=1) as response:  # noqa: S310 - localhost
            return bool(response.status == 200)
    except OSError:
        return False


def measure_sse(levels: Sequence[int], work: Path) -> dict[str, Any]:
    """RSS of a real sink process with 0 and then each number of open SSE streams."""
    secret = secrets.token_urlsafe(32)
    key = secret.encode()
    with running_sink(work, secret, max(levels), work / "sink.log") as system:
        sink = system.services["sink"].process
        assert sink is not None
        process = psutil.Process(sink.pid)
        streams = Streams(system.sink_port)

        def live(count: int) -> None:
            wait_for(lambda: sse_clients(system.sink_url) == count, 30, f"not {count} streams live")

        async def run() -> dict[str, Any]:
            # Warm-up: the first streams import and allocate what every later one reuses.
            await streams.open_many([new_job_id(key) for _ in range(20)])
            await streams.close_all()
            await asyncio.to_thread(live, 0)
            await asyncio.sleep(1.0)
            baseline = rss_mb(process)
            rows = []
            for level in levels:
                more = level - len(streams.open)
                started = time.perf_counter()
                await streams.open_many([new_job_id(key) for _ in range(more)])
                open_s = time.perf_counter() - started
                await asyncio.to_thread(live, level)
                await asyncio.sleep(1.0)
                rss = rss_mb(process)
                rows.append(
                    {
                        "streams": level,
                        "rss_mb": round(rss, 1),
                        "growth_mb": round(rss - baseline, 1),
                        "per_stream_kb": round((rss - baseline) * 1024 / level, 1),
                        "opened_per_s": round(more / open_s, 0),
                    }
                )
                logger.info("%d streams open: sink RSS %.1f MB (%+.1f MB)", level, rss, rss - baseline)
            cpu_before = sum(process.cpu_times()[:2])
            await asyncio.sleep(2.0)
            idle_cpu = (sum(process.cpu_times()[:2]) - cpu_before) / 2.0
            await streams.close_all()
            await asyncio.to_thread(live, 0)
            await asyncio.sleep(1.0)
            first, last = rows[0], rows[-1]
            slope = (last["rss_mb"] - first["rss_mb"]) * 1024 / max(1, last["streams"] - first["streams"])
            return {
                "endpoint": "GET /v1/results/{id}/events",
                "store": "sqlite",
                "baseline_rss_mb": round(baseline, 1),
                "levels": rows,
                "per_stream_kb": round(slope, 1),
                "idle_cpu_cores_with_streams_open": round(idle_cpu, 4),
                "rss_after_close_mb": round(rss_mb(process), 1),
            }

        return asyncio.run(run())


# --- report -------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report page: machine, command, the three tables and how to read them."""
    m = report["machine"]
    pg = report["postgres"]
    server = pg["server"]
    lines = [
        "# Results store and SSE benchmark",
        "",
        f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, with `{report['command']}`"
        f"{' (smoke run)' if report['smoke'] else ''}; {report['seconds_per_run']:g} s per measurement, "
        f"{report['duration_s']:.0f} s in all. A prediction record is {report['prediction_record_bytes']} bytes "
        "on the predictions topic. Figures from one run on a shared host: read them as orders of magnitude.",
        "",
        "## Writes, as the sink writes (one `write_batch` per polled batch, one writer)",
        "",
        f"PostgreSQL {server['server_version']} (fsync {server['fsync']}, synchronous_commit "
        f"{server['synchronous_commit']}, {'on this machine' if server['on_this_machine'] else 'elsewhere'}); "
        "SQLite in WAL mode with synchronous=FULL. CPU is the writing thread's (client) and, for PostgreSQL, "
        "all of the server's processes.",
        "",
        "| store | batch | results/s | batches/s | batch ms p50 / p99 | client CPU ms/result | server CPU ms/result |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in (("PostgreSQL", pg["writes"]), ("SQLite", report["sqlite"]["writes"])):
        for r in runs:
            lines.append(
                f"| {name} | {r['batch_size']} | {_num(r['results_per_s'])} | {_num(r['batches_per_s'])} | "
                f"{r['batch_ms']['p50']:.2f} / {r['batch_ms']['p99']:.2f} | {r['client_cpu_ms_per_result']:.3f} | "
                f"{_num(r['server_cpu_ms_per_result'], 3)} |"
            )
    lines += [
        "",
        "Writers take turns on one advisory lock from their first insert to their commit (docs/sink.md: seq in "
        "commit order), so these are also the ceiling of all replicas together, not of one.",
        "",
        "## LISTEN/NOTIFY: what a second replica receives",
        "",
        "The first replica writes flat out; a second one, in its own process, runs the sink's listener and a plain "
        "LISTEN. Each `write_batch` sends one NOTIFY. Delay: from `write_batch` starting to the result reaching "
        "the second replica's hub.",
        "",
        "| batch | written results/s | notifications/s received | results/s to the 2nd replica's hub | "
        "delay ms p50 / p99 | caught up | listener CPU ms/result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pg["notify"]:
        lines.append(
            f"| {r['batch_size']} | {_num(r['writer_results_per_s'])} | {_num(r['notifications_per_s'])} | "
            f"{_num(r['listener_results_per_s'])} | {r['delay_ms']['p50']:.1f} / {r['delay_ms']['p99']:.1f} | "
            f"{'yes' if r['listener_caught_up'] else 'no'} | {r['listener_cpu_ms_per_result']:.3f} |"
        )
    feed = pg["feed_read"]
    sse = report["sse"]
    lines += [
        "",
        f"The listener's read path alone (`results_since`, pages of {feed['page']}, decoded) read "
        f"**{_num(feed['results_per_s'])} results/s** at {feed['client_cpu_ms_per_result']:.3f} ms of CPU per "
        f"result (and {_num(feed['server_cpu_ms_per_result'], 3)} ms on the server): every replica reads "
        "every result any replica stores, so this is the most results per second the whole system can store "
        "while each replica still hears of all of them.",
        "",
        "## SSE: memory per open stream",
        "",
        f"A sink process as `make run` starts it (SQLite store, on a local broker), streams on "
        f"`{sse['endpoint']}` for jobs with no result yet (each stays open, pinged every 15 s). RSS with no "
        f"stream open, after a warm-up of 20: {sse['baseline_rss_mb']:.1f} MB.",
        "",
        "| open streams | sink RSS MB | growth MB | per stream KB | opened per s |",
        "|---|---|---|---|---|",
    ]
    for r in sse["levels"]:
        lines.append(
            f"| {r['streams']:,} | {r['rss_mb']:.1f} | {r['growth_mb']:.1f} | {r['per_stream_kb']:.1f} | "
            f"{_num(r['opened_per_s'])} |"
        )
    lines += [
        "",
        f"Between the two levels: **{sse['per_stream_kb']:.1f} KB per open stream**. With the streams open and "
        f"idle the sink used {sse['idle_cpu_cores_with_streams_open'] * 100:.1f}% of a core; after they closed "
        f"its RSS was {sse['rss_after_close_mb']:.1f} MB (Python keeps freed memory for reuse).",
        "",
        "What these figures mean for more machines: [../scaling.md](../scaling.md).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a ~20 s run, written to a temporary folder")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"where to write results (default {OUTPUT_DIR})"
    )
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 5)")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    output = args.output or (Path(tempfile.mkdtemp(prefix="store-bench-")) if args.smoke else OUTPUT_DIR)
    output.mkdir(parents=True, exist_ok=True)
    seconds = args.seconds or (0.7 if args.smoke else 5.0)
    secret = secrets.token_bytes(32)
    started = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "command": COMMAND + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "seconds_per_run": seconds,
        "prediction_record_bytes": prediction_record_bytes(secret),
    }
    report["machine"].pop("threads", None)  # model_bench's model threads: not a property of this run
    report["postgres"] = measure_postgres(seconds, secret)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as work_dir:
        work = Path(work_dir)
        report["sqlite"] = measure_sqlite(seconds, secret, work)
        report["sse"] = measure_sse(SMOKE_SSE_STREAMS if args.smoke else SSE_STREAMS, work)
    report["duration_s"] = round(time.monotonic() - started, 1)
    (output / "store.json").write_text(json.dumps(report, indent=2) + "\n")
    page = render_markdown(report)
    (output / "store.md").write_text(page)
    print(page)
    logger.info("wrote %s in %.0f s", output, report["duration_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
