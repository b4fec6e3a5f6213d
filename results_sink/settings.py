"""Settings of the results sink: where it listens, where it stores results, how its SSE streams behave."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from pipeline_core.settings import WebSettings, mask_url_password

STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class SinkSettings(WebSettings):
    """One results-sink instance (HTTP on `sink_host:sink_port`)."""

    sink_host: str = Field("127.0.0.1", description="Interface to listen on (`0.0.0.0` in a container).")
    sink_port: int = Field(8001, ge=1, le=65535, description="Port the sink listens on.")
    results_store_url: str = Field(
        "sqlite:///var/results.db",
        description="Where results are kept: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or "
        "`postgresql://user:password@host:5432/db` (shared by several sink replicas).",
    )
    sse_ping_interval_s: float = Field(
        15.0, gt=0, le=300, description="A keep-alive comment is sent every this many seconds."
    )
    sse_stream_timeout_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="A stream still waiting after this long ends with a `timeout` event.",
    )
    sse_send_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A client that cannot take one event within this long is dropped."
    )
    max_sse_connections: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Streams above this many (all clients) get 503 and Retry-After.",
    )
    max_connections: int = Field(
        12_000,
        ge=1,
        le=1_000_000,
        description="Open connections above this many get 503 + Retry-After on their first request, closed. "
        "Each event stream holds one: keep it above MAX_SSE_CONNECTIONS.",
    )
    max_sse_streams_per_client: int = Field(
        1_000,
        ge=1,
        le=1_000_000,
        description="Streams one client (one address) may have open; above, 429 and Retry-After. Behind a "
        "proxy every client has the proxy's address unless uvicorn trusts its X-Forwarded-For "
        "(FORWARDED_ALLOW_IPS).",
    )
    max_ids_per_stream: int = Field(
        100, ge=1, le=10_000, description="Most job ids one `/v1/events` stream may watch."
    )
    results_retention_s: float = Field(
        30 * 86_400.0,
        ge=0,
        description="Results older than this are deleted from the store (0 keeps them for ever). A job whose "
        "result was deleted answers 202 (pending) again, so keep this longer than clients wait.",
    )
    feedback_retention_s: float = Field(
        90 * 86_400.0,
        ge=0,
        description="Feedback reports older than this are deleted (0 keeps them for ever).",
    )
    purge_interval_s: float = Field(
        3600.0, gt=0, le=86_400, description="How often the sink deletes what is past its retention."
    )
    shutdown_grace_s: float = Field(
        5.0, gt=0, le=120, description="On stop, how long streams and the batch in hand get to finish."
    )

    @field_validator("results_store_url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(STORE_SCHEMES) or value in STORE_SCHEMES:
            raise ValueError(
                f"RESULTS_STORE_URL: {mask_url_password(value)!r} is not a store URL; use sqlite:///path/to/results.db "
                "(four slashes for an absolute path) or postgresql://user:password@host:5432/db"
            )
        return value

    @model_validator(mode="after")
    def _pings_within_timeout(self) -> SinkSettings:
        if self.sse_ping_interval_s >= self.sse_stream_timeout_s:
            raise ValueError(
                "SSE_PING_INTERVAL_S must be shorter than SSE_STREAM_TIMEOUT_S, or no ping is ever sent"
            )
        if self.max_connections <= self.max_sse_connections:
            raise ValueError(
                f"MAX_CONNECTIONS ({self.max_connections}) must be above MAX_SSE_CONNECTIONS "
                f"({self.max_sse_connections}): every event stream holds a connection"
            )
        return self

    @property
    def uvicorn_graceful_shutdown_s(self) -> float:
        """uvicorn's own shutdown deadline: longer than the streams' grace, so they end before it cancels."""
        return self.shutdown_grace_s + 5.0
