"""The fan-out hub on its own: each client gets its jobs' results; a client that falls behind is dropped."""

from __future__ import annotations

import asyncio

import pytest
from sink_helpers import prediction

from results_sink.hub import ResultHub
from results_sink.store import StoredResult

pytestmark = pytest.mark.timeout(60)


def stored(seq: int, job_id: str) -> StoredResult:
    return StoredResult(seq, job_id, prediction(job_id), 1.0)


def seq(result: StoredResult | None) -> int | None:
    return result.seq if result is not None else None


def test_results_reach_only_the_clients_watching_their_job() -> None:
    async def scenario() -> None:
        hub = ResultHub(queue_limit=10)
        with hub.subscribe(["a", "b"]) as ab, hub.subscribe(["b"]) as b:
            assert hub.subscriber_count == 2
            hub.publish([stored(1, "a"), stored(2, "b"), stored(3, "c")])
            assert [seq(await ab.next()), seq(await ab.next())] == [1, 2]
            assert seq(await b.next()) == 2
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(b.next(), 0.05)
        assert hub.subscriber_count == 0
        hub.publish([stored(4, "a")])  # nobody watches any more: nothing to do, nothing kept

    asyncio.run(scenario())


def test_a_client_whose_queue_is_full_is_dropped_without_slowing_the_others() -> None:
    async def scenario() -> None:
        hub = ResultHub(queue_limit=2)
        with hub.subscribe(["a", "b", "c"]) as slow, hub.subscribe(["c"]) as fast:
            hub.publish([stored(1, "a"), stored(2, "b")])
            hub.publish([stored(3, "c")])  # `slow` is 2 behind: dropped, `fast` still served
            assert slow.end_reason == "overflow"
            assert hub.subscriber_count == 1
            assert [seq(await slow.next()) for _ in range(3)] == [1, 2, None]  # what it had, then the end
            assert seq(await fast.next()) == 3
        assert hub.subscriber_count == 0

    asyncio.run(scenario())


def test_close_ends_every_subscription() -> None:
    async def scenario() -> None:
        hub = ResultHub(queue_limit=2)
        with hub.subscribe(["a"]) as sub:
            waiting = asyncio.ensure_future(sub.next())
            await asyncio.sleep(0)
            hub.close()
            assert await waiting is None
            assert sub.end_reason == "shutdown"
        assert hub.subscriber_count == 0

    asyncio.run(scenario())
