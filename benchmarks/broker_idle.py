"""The broker's CPU while the system idles, and what each service's connection costs it.

`.venv/bin/python -m benchmarks.broker_idle` (~3 min): a broker from the jars and `make run`'s system (API,
two consumers, sink) with nothing uploaded. After a warm-up (a fresh broker's JIT compiler takes a third of a
core for its first half minute), it measures every process's CPU over a window, then stops the services one by
one (API, the consumers, the sink) and measures again after each: the broker's drop is what that service's
idle requests (heartbeats, empty fetches, admission's offset queries, commits) cost it. On 2 cores this fixed
cost is a share of the capacity whatever the load. The figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from kafka_local import free_port
from kafka_local.broker import LocalBroker
from launcher.system import System, isolated_env

STOP_ORDER = ("api", "inference-1", "inference-2", "sink")


def cpu_ms_per_s(processes: dict[str, psutil.Process], window_s: float) -> dict[str, float]:
    """Each live process's CPU over `window_s`, in ms per second."""
    before = {name: sum(p.cpu_times()[:2]) for name, p in processes.items() if p.is_running()}
    time.sleep(window_s)
    return {
        name: round((sum(processes[name].cpu_times()[:2]) - cpu) / window_s * 1000, 1)
        for name, cpu in before.items()
        if processes[name].is_running() and processes[name].status() != psutil.STATUS_ZOMBIE
    }


def measure(warmup_s: float, window_s: float) -> list[tuple[str, dict[str, float]]]:
    """(what is connected, CPU ms/s per process) for the whole system and after each service stopped."""
    with tempfile.TemporaryDirectory(prefix="broker-idle-") as tmp:
        root = Path(tmp)
        broker = LocalBroker(root / "broker", port=free_port(), controller_port=free_port())
        with broker, (root / "system.log").open("w") as log:
            system = System(
                broker.bootstrap_servers,
                root / "system",
                free_port(),
                free_port(),
                consumers=2,
                env=isolated_env("broker-idle") | {"LOG_LEVEL": "WARNING"},
                out=log,
            )
            system.start(ready_timeout_s=180)
            try:
                assert broker._process is not None
                processes = {"broker": psutil.Process(broker._process.pid)} | {
                    name: psutil.Process(s.process.pid) for name, s in system.services.items() if s.process
                }
                time.sleep(warmup_s)
                rows = [("all services", cpu_ms_per_s(processes, window_s))]
                for name in STOP_ORDER:
                    system.services[name].terminate()
                    system.services[name].wait(30)
                    time.sleep(2)  # the group's rebalance after a member left
                    rows.append(
                        (
                            f"without {', '.join(STOP_ORDER[: STOP_ORDER.index(name) + 1])}",
                            cpu_ms_per_s(processes, window_s),
                        )
                    )
            finally:
                system.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=40.0, help="seconds before the first window")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of each measure")
    args = parser.parse_args()
    rows = measure(args.warmup, args.window)
    print("| connected | broker CPU ms/s | the services' own CPU ms/s |")
    print("|---|---|---|")
    for connected, cpu in rows:
        own = ", ".join(f"{name} {ms:.0f}" for name, ms in cpu.items() if name != "broker") or "-"
        print(f"| {connected} | {cpu.get('broker', 0):.0f} | {own} |")


if __name__ == "__main__":
    main()
