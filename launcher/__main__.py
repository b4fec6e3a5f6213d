"""`python -m launcher` (what `make run` calls): broker, topics, sink, consumers, API; Ctrl-C stops all."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack

from pydantic import ValidationError

from kafka_local.provision import provide_broker
from launcher.processes import Service
from launcher.settings import LauncherSettings
from pipeline_core.clients import wait_for_admin
from pipeline_core.errors import PipelineError
from pipeline_core.logs import configure_logging
from pipeline_core.topics import ensure_topics, pipeline_topics

logger = logging.getLogger("launcher")


def _services(settings: LauncherSettings, bootstrap: str) -> list[Service]:
    env = dict(os.environ)
    env.setdefault("JOB_ID_SECRET", secrets.token_urlsafe(32))  # API and sink must share it
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PYTHONUNBUFFERED": "1",
        "API_PORT": str(settings.api_port),
        "SINK_PORT": str(settings.sink_port),
        "RESULTS_STORE_URL": env.get("RESULTS_STORE_URL", f"sqlite:///{settings.data_dir.resolve()}/results.db"),
        "RESULTS_PUBLIC_URL": env.get("RESULTS_PUBLIC_URL", f"http://localhost:{settings.sink_port}"),
        "RESULTS_INTERNAL_URL": env.get("RESULTS_INTERNAL_URL", f"http://127.0.0.1:{settings.sink_port}"),
    }
    python = sys.executable
    services = [Service("sink", [python, "-m", "results_sink"], env, colour=0)]
    services += [
        Service(f"inference-{n}", [python, "-m", "inference_consumer"], env, colour=n)
        for n in range(1, settings.inference_consumers + 1)
    ]
    services.append(Service("api", [python, "-m", "producer_api"], env, colour=5))
    return services


def _wait_ready(url: str, timeout_s: float, services: list[Service]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and all(s.running for s in services):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own localhost URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def main() -> int:
    """Run everything until Ctrl-C or SIGTERM, then stop it all in order; exit non-zero if a service died."""
    try:
        settings = LauncherSettings()
    except ValidationError as e:
        print(f"make run: invalid settings:\n{e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            bootstrap, _local = stack.enter_context(provide_broker(
                settings.data_dir.resolve() / "kafka", try_docker=False,
                port=settings.local_kafka_port, controller_port=settings.local_kafka_controller_port,
            ))
            admin = wait_for_admin(settings.model_copy(update={"kafka_bootstrap_servers": bootstrap}), "launcher")
            try:
                ensure_topics(admin, pipeline_topics(settings))
            finally:
                admin.close()
        except PipelineError as e:
            logger.error("%s", e)
            return 1
        services = _services(settings, bootstrap)
        for service in services:
            service.start()
        stack.callback(_stop_all, services, settings.service_stop_timeout_s)
        return _supervise(settings, services, stop, started)
    return 0


def _supervise(settings: LauncherSettings, services: list[Service], stop: threading.Event, started: float) -> int:
    api = f"http://localhost:{settings.api_port}"
    if _wait_ready(f"{api}/readyz", 120, services) and _wait_ready(
        f"http://127.0.0.1:{settings.sink_port}/healthz", 30, services
    ):
        logger.info(
            "ready in %.1f s: open %s/ to classify photos (API docs %s/docs, results on :%d); Ctrl-C stops",
            time.monotonic() - started, api, api, settings.sink_port,
        )
    while not stop.wait(0.5):
        dead = [s for s in services if not s.running]
        if dead:
            logger.error("%s exited with %s; stopping everything", dead[0].name, dead[0].process.returncode)  # type: ignore[union-attr]
            return 1
    logger.info("stopping: API first (no new uploads), then consumers, then the sink, then the broker")
    return 0


def _stop_all(services: list[Service], timeout_s: float) -> None:
    # Reverse of start: the API stops taking uploads before the consumers and the sink drain and leave.
    for group in (services[-1:], services[1:-1], services[:1]):
        for service in group:
            service.terminate()
        for service in group:
            service.wait(timeout_s)


if __name__ == "__main__":
    sys.exit(main())
