"""`python -m launcher` (what `make run` calls): broker, topics, sink, consumers, API; Ctrl-C stops all."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from kafka_local.broker import LocalBroker
from kafka_local.cluster import ADMIN, SERVICE_USERS, LocalCluster
from kafka_local.provision import provide_broker
from launcher.settings import LauncherSettings
from launcher.supervisor import Supervisor
from launcher.system import ServiceDiedError, System
from pipeline_core.errors import PipelineError
from pipeline_core.startup import load_settings

logger = logging.getLogger("launcher")


def main() -> int:
    """Run everything until Ctrl-C or SIGTERM, then stop it all in order; exit non-zero if a service died."""
    settings = load_settings(LauncherSettings, "launcher")
    if settings is None:
        return 2
    stop, promote = threading.Event(), threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: promote.set())
    started = time.monotonic()
    data_dir = settings.data_dir.resolve()
    try:
        brokers, security = settings.local_kafka_brokers, settings.local_kafka_security
        single = brokers == 1 and security == "PLAINTEXT"
        with provide_broker(
            data_dir / ("kafka" if single else f"kafka-{brokers}-{security.lower()}"),
            try_docker=False,
            port=settings.local_kafka_port,
            controller_port=settings.local_kafka_controller_port,
            brokers=brokers,
            security=security,
        ) as (bootstrap, local):
            env, role_env = cluster_env(local)
            system = System(
                bootstrap,
                data_dir,
                settings.api_port,
                settings.sink_port,
                settings.inference_consumers,
                env=env,
                role_env=role_env,
                grant_acls=isinstance(local, LocalCluster) and local.security != "PLAINTEXT",
                stop_timeout_s=settings.service_stop_timeout_s,
                shadow_model=settings.shadow_model_name,
                shadow_consumers=settings.shadow_consumers,
                canary_consumers=settings.canary_consumers,
            )
            pid_file = data_dir / "launcher.pid"
            data_dir.mkdir(parents=True, exist_ok=True)  # with a given cluster, nothing made it yet
            pid_file.write_text(f"{os.getpid()}\n")  # `make promote` signals this process
            try:
                return _supervise(system, stop, promote, started)
            finally:
                pid_file.unlink(missing_ok=True)
                logger.info(
                    "stopping: the API first (no new uploads), then the consumers, the sink, the broker"
                )
                system.stop()
    except PipelineError as e:
        logger.error("%s", e)
        return 1


def cluster_env(
    local: LocalBroker | LocalCluster | None,
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The settings a system gets from the local cluster: the launcher's own (as `admin`), and each
    service's credentials (none on a plaintext cluster, or on one the launcher did not start)."""
    if not isinstance(local, LocalCluster):
        return {}, {}
    services = (
        {user: local.client_env(user) for user in SERVICE_USERS} if local.security != "PLAINTEXT" else {}
    )
    return local.client_env(ADMIN), services


def _supervise(system: System, stop: threading.Event, promote: threading.Event, started: float) -> int:
    try:
        system.start()
        state = "ready"
    except ServiceDiedError as e:
        # A service that dies (or hangs) while the system starts is the supervisor's to restart, as at any
        # other time; the rest serves meanwhile.
        logger.warning("%s while starting; the supervisor takes over", e)
        state = "not everything is ready yet (see above), serving"
    logger.info(
        "%s in %.1f s: open http://localhost:%d/ to classify photos (API docs at /docs; results on :%d). "
        "Ctrl-C stops everything.",
        state,
        time.monotonic() - started,
        system.api_port,
        system.sink_port,
    )
    if system.canary_consumers:
        logger.info(
            "canary: %d of the primary group's %d consumers run %s and answer the images of their partitions",
            system.canary_consumers,
            system.consumers + system.canary_consumers,
            system.shadow_model,
        )
    if system.shadow_model:
        logger.info(
            "candidate model %s: compare at http://localhost:%d/v1/models; `make promote` (SIGUSR1 to pid %d) makes "
            "it the primary",
            system.shadow_model,
            system.sink_port,
            os.getpid(),
        )
    supervisor = Supervisor(system)
    while not stop.wait(0.5):
        if promote.is_set():
            promote.clear()
            # In this loop, so that the supervisor never restarts a consumer the promotion stopped.
            try:
                system.promote()
            except PipelineError as e:
                logger.error("cannot promote: %s", e)
        supervisor.check()
    if supervisor.given_up:
        logger.error(
            "services that crash-looped and were given up: %s", ", ".join(sorted(supervisor.given_up))
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
