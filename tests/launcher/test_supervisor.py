"""The launcher's supervisor on stand-in services: restarts with backoff, and gives up on a crash loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from launcher.supervisor import RestartPolicy, Supervisor
from pipeline_core.retry import Backoff


@dataclass
class DeadService:
    name: str
    running: bool = False
    process: None = None


@dataclass
class StandInSystem:
    """A system whose services die at once: every start is recorded."""

    services: dict[str, DeadService] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def start_service(self, name: str) -> DeadService:
        self.started.append(name)
        self.services[name] = DeadService(name)
        return self.services[name]


def test_a_service_that_keeps_dying_is_restarted_then_given_up_while_others_run() -> None:
    system = StandInSystem(
        {"inference-1": DeadService("inference-1"), "api": DeadService("api", running=True)}
    )
    policy = RestartPolicy(max_restarts=3, healthy_s=60, backoff=Backoff(first_s=0.01, max_s=0.02))
    supervisor = Supervisor(system, policy)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while "inference-1" not in supervisor.given_up and time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.005)
    assert system.started == ["inference-1"] * 3, "restarted max_restarts times, then no more"
    assert supervisor.given_up == {"inference-1"}
    assert system.services["api"].running


def test_a_restart_waits_for_its_backoff() -> None:
    system = StandInSystem({"sink": DeadService("sink")})
    policy = RestartPolicy(backoff=Backoff(first_s=0.3, max_s=0.3))
    supervisor = Supervisor(system, policy)  # type: ignore[arg-type]
    supervisor.check()
    assert system.started == [], "not at once"
    time.sleep(0.4)
    supervisor.check()
    assert system.started == ["sink"]


def test_a_run_that_lasted_resets_the_count_so_a_rare_crash_is_always_restarted() -> None:
    system = StandInSystem({"api": DeadService("api")})
    policy = RestartPolicy(max_restarts=1, healthy_s=0.05, backoff=Backoff(first_s=0.001, max_s=0.001))
    supervisor = Supervisor(system, policy)  # type: ignore[arg-type]
    for _ in range(4):  # each run lasts longer than healthy_s before it dies
        time.sleep(0.06)
        supervisor.check()  # notices the exit
        time.sleep(0.01)
        supervisor.check()  # restarts it
    assert system.started == ["api"] * 4 and not supervisor.given_up
