"""`make run` (the launcher as a real process) under kill -9 of a consumer with 500 images in flight: the
consumer is restarted, every image gets exactly one prediction on the topic, and the system keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from support import lost_and_duplicated, predictions_on_topic, record, upload, wait_by_polling

from kafka_local import free_port
from launcher.system import isolated_env
from pipeline_core.settings import PipelineSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
REPO = Path(__file__).resolve().parents[2]


def consumers_of(launcher: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The launcher's running inference consumers (a killed one, a zombie until reaped, is not one)."""
    consumers = []
    for child in psutil.Process(launcher.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "inference_consumer" in " ".join(child.cmdline()):
                consumers.append(child)
        except psutil.Error:  # it exited meanwhile
            continue
    return consumers


def wait_for(condition, what: str, timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(0.2)


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def launched(
    kafka_bootstrap: str, tmp_path: Path, output_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """`make run` as a real process on the session broker; a test's `extra_env` marker adds settings."""
    marker = request.node.get_closest_marker("extra_env")
    extra: dict[str, str] = marker.args[0] if marker else {}
    name = f"launcher-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    env = (
        dict(os.environ)
        | isolated_env(name)
        | {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "API_PORT": str(free_port()),
            "SINK_PORT": str(free_port()),
            "DATA_DIR": str(tmp_path / "var"),
            "INFERENCE_CONSUMERS": "2",
            "PROCESSING_GUARANTEE": "exactly-once",
            "MAX_BACKLOG_IMAGES": "2000",  # 500 images in flight at once, all accepted
            # ...whatever the consumers' throughput read while one of them restarted (CI saw a 429 here). The
            # wait limit has its own system test (tests/e2e/test_hostile_traffic.py).
            "MAX_QUEUE_WAIT_S": "0",
        }
        | extra
    )
    log = (output_dir / f"{name}.log").open("wb")
    launcher = subprocess.Popen([sys.executable, "-m", "launcher"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        yield launcher, env
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        log.close()


def test_kill_9_of_a_consumer_under_make_run_is_restarted_and_every_image_is_predicted_once(
    launched: tuple[subprocess.Popen[bytes], dict[str, str]], photos: dict[str, bytes], output_dir: Path
) -> None:
    launcher, env = launched
    api, sink = f"http://127.0.0.1:{env['API_PORT']}", f"http://127.0.0.1:{env['SINK_PORT']}"
    wait_for(lambda: ready(f"{api}/readyz") and ready(f"{sink}/readyz"), "make run ready")
    wait_for(lambda: len(consumers_of(launcher)) == 2, "two consumers running")
    with httpx.Client(base_url=api, timeout=30) as client:
        jobs = [
            job
            for n in range(125)
            for job in upload(client, {f"{n}-{k}.jpg": photos["coffee"] for k in range(4)})
        ]
    ids = {job["id"] for job in jobs}
    victim = consumers_of(launcher)[0]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(10)

    wait_for(lambda: len(consumers_of(launcher)) == 2, "the killed consumer restarted", timeout_s=60)
    restarted_s = time.monotonic() - killed_at
    assert launcher.poll() is None, "make run keeps running"
    settings = PipelineSettings.model_validate(
        {k.lower(): v for k, v in env.items() if k.lower() in PipelineSettings.model_fields}
    )
    lost, duplicated = lost_and_duplicated(predictions_on_topic(settings, ids), ids)
    assert (lost, duplicated) == (0, 0), f"{lost} lost, {duplicated} duplicated of {len(ids)}"
    with httpx.Client(base_url=api, timeout=30) as client:
        after = upload(client, {"after.jpg": photos["coffee"]})
        assert wait_by_polling(client, after[0]["result_url"])["label"] == "espresso", "still serving"
    record(
        output_dir,
        "make run: kill -9 one of two consumers (exactly-once)",
        images=len(ids),
        faults=1,
        seconds_to_restart=round(restarted_s, 1),
        lost=lost,
        duplicated=duplicated,
    )


@pytest.mark.extra_env(
    {"SHADOW_MODEL_NAME": "efficientnet-lite1", "INFERENCE_CONSUMERS": "1", "CANARY_CONSUMERS": "1"}
)
def test_a_canary_under_make_run_then_make_promote_makes_the_candidate_the_primary(
    launched: tuple[subprocess.Popen[bytes], dict[str, str]], photos: dict[str, bytes], output_dir: Path
) -> None:
    """`SHADOW_MODEL_NAME=... CANARY_CONSUMERS=1 make run`: a primary consumer, a canary and a shadow; the
    candidate answers a share of the uploads. Then `make promote`: the running launcher replaces its primary
    consumer by one of the candidate and stops the shadow; the canary stays, and every upload is the
    candidate's."""
    launcher, env = launched
    api, sink = f"http://127.0.0.1:{env['API_PORT']}", f"http://127.0.0.1:{env['SINK_PORT']}"
    wait_for(lambda: ready(f"{api}/readyz") and ready(f"{sink}/readyz"), "make run ready")
    wait_for(
        lambda: len(consumers_of(launcher)) == 3, "the primary, the canary and the shadow consumer running"
    )
    models = sorted(c.environ().get("MODEL_NAME", "") for c in consumers_of(launcher))
    assert models == ["", "efficientnet-lite1", "efficientnet-lite1"], "MODEL_NAME unset: the default, Lite0"
    with httpx.Client(base_url=api, timeout=30) as client:
        # A running canary process may not hold partitions yet (it converts its model, then joins the group):
        # uploads go on until both models have answered.
        answered: set[str] = set()
        deadline = time.monotonic() + 120
        while len(answered) < 2 and time.monotonic() < deadline:
            before = upload(client, {f"before-{n}.jpg": photos["coffee"] for n in range(6)})
            answered |= {wait_by_polling(client, job["result_url"])["model"]["name"] for job in before}  # type: ignore[index]
        assert answered == {"efficientnet-lite0", "efficientnet-lite1"}, "the canary answered a share"

        make = ["make", "--no-print-directory", "promote"]
        subprocess.run(make, cwd=REPO, env=env, check=True, timeout=30)
        wait_for(
            lambda: (
                len(consumers_of(launcher)) == 2
                and all(c.environ().get("MODEL_NAME") == "efficientnet-lite1" for c in consumers_of(launcher))
            ),
            "the shadow stopped, both members of the primary's group running the candidate",
            timeout_s=180,
        )
        after = upload(client, {f"after-{n}.jpg": photos["coffee"] for n in range(6)})
        for job in after:
            result = wait_by_polling(client, job["result_url"])
            assert result["model"]["name"] == "efficientnet-lite1" and result["label"] == "espresso"  # type: ignore[index]
    assert launcher.poll() is None, "make run keeps running"
