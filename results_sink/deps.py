"""Request dependencies: the app's settings, store, hub and consumer, and the parsed Last-Event-ID."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Header, HTTPException, Request

from results_sink.consumer import SinkConsumer
from results_sink.hub import ResultHub
from results_sink.settings import SinkSettings
from results_sink.store import ResultStore


def get_settings(request: Request) -> SinkSettings:
    return cast(SinkSettings, request.app.state.settings)


def get_store(request: Request) -> ResultStore:
    return cast(ResultStore, request.app.state.store)


def get_hub(request: Request) -> ResultHub:
    return cast(ResultHub, request.app.state.hub)


def get_consumer(request: Request) -> SinkConsumer:
    return cast(SinkConsumer, request.app.state.consumer)


# What `last_event_id` takes: nothing, or the seq of an event this sink sent (the OpenAPI document says so;
# FastAPI does not check it, so that a bad value is this dependency's 400).
LAST_EVENT_ID = Header(
    alias="Last-Event-ID",
    description="The id of the last event received: a reconnecting stream sends only later ones",
    json_schema_extra={"pattern": "^[0-9]{0,18}$"},
)


def last_event_id(last_event_id: Annotated[str, LAST_EVENT_ID] = "") -> int:
    """The seq a reconnecting SSE client saw last (0 when it saw none); 400 when it is not one."""
    if not last_event_id.strip():
        return 0
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HTTPException(400, detail=f"Last-Event-ID must be an event id this sink sent: {value[:40]!r}")
    return int(value)


SettingsDep = Annotated[SinkSettings, Depends(get_settings)]
StoreDep = Annotated[ResultStore, Depends(get_store)]
HubDep = Annotated[ResultHub, Depends(get_hub)]
ConsumerDep = Annotated[SinkConsumer, Depends(get_consumer)]
LastEventIdDep = Annotated[int, Depends(last_event_id)]
