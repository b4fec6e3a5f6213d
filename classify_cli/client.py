"""HTTP to the system: uploads, and requests retried on 429/503 (honouring Retry-After) or lost links."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from classify_cli.errors import (
    AuthenticationError,
    ProtocolError,
    SystemUnreachableError,
    UploadRejectedError,
)

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # overloaded, broker down, or a proxy in front restarting
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait: Retry-After when the server gives one, else exponential backoff."""

    max_retries: int = 5
    max_connect_retries: int = 2  # a refused connection rarely heals within seconds: say so soon
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """The wait before retry number `attempt` (1-based) when the server does not say."""
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Retry-After if the response has a usable one (capped), else the backoff."""
        given = retry_after_s(response) if response is not None else None
        return min(self.max_delay_s, given) if given is not None else self.backoff(attempt)


def retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (it may be a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Job:
    """One accepted upload, as `POST /v1/images` describes it."""

    id: str
    filename: str
    result_url: str
    events_url: str

    @property
    def results_base(self) -> str:
        """The results service's base URL, taken from the job's own result URL."""
        return self.result_url.rsplit("/v1/results/", 1)[0]


async def send(
    http: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
    service: str,
    sleep: Sleep = asyncio.sleep,
) -> httpx.Response:
    """Send, retrying 429/503 (and lost connections) within the policy; unreachable or overloaded raises."""
    for attempt in range(1, policy.max_retries + 2):
        request = build()  # a fresh request per attempt, so a multipart body is never half-consumed
        try:
            response = await http.send(request)
        except httpx.TransportError as e:
            limit = policy.max_connect_retries if isinstance(e, httpx.ConnectError) else policy.max_retries
            if attempt > limit:
                message = f"cannot reach the {service} at {_origin(request)}: {_why(e)}"
                raise SystemUnreachableError(message) from e
            wait = policy.backoff(attempt)
            logger.warning(
                "%s %s failed (%s); retry %d in %.1f s", request.method, request.url, _why(e), attempt, wait
            )
        else:
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt > policy.max_retries:
                raise SystemUnreachableError(
                    f"the {service} at {_origin(request)} is still unavailable (HTTP {response.status_code}) "
                    f"after {policy.max_retries} retries: {error_text(response)}"
                )
            wait = policy.delay(attempt, response)
            logger.warning("%s answered %d; retry %d in %.1f s", service, response.status_code, attempt, wait)
        await sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def _origin(request: httpx.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode()}"


def _why(error: Exception) -> str:
    return str(error) or type(error).__name__


def error_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON error body, or a stand-in when the response is not JSON."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"error": response.text[:200] or f"HTTP {response.status_code}"}


def error_text(response: httpx.Response) -> str:
    """A one-line summary of an error response: `error: reason`."""
    body = error_body(response)
    reason = body.get("reason") or body.get("detail")
    return f"{body.get('error')}: {reason}" if reason else str(body.get("error"))


def check_auth(response: httpx.Response) -> None:
    """Raise the clear message for a 401."""
    if response.status_code == 401:
        raise AuthenticationError(
            f"{error_text(response)} (give the system's key with --api-key or CLASSIFY_API_KEY)"
        )


async def upload(
    http: httpx.AsyncClient,
    api_url: str,
    files: Sequence[tuple[str, bytes]],
    policy: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
) -> list[Job]:
    """Upload files in one request; their jobs in the same order, or `UploadRejectedError` for a 4xx."""
    parts = [("file", (name, data)) for name, data in files]
    # A lost connection is retried too, at the risk of a duplicate job: better than losing the batch.
    url = f"{api_url}/v1/images"
    response = await send(
        http, lambda: http.build_request("POST", url, files=parts), policy, "upload API", sleep
    )
    check_auth(response)
    if response.status_code == 202:
        return _jobs(response, len(files))
    if 400 <= response.status_code < 500:
        body = error_body(response)
        raise UploadRejectedError(
            response.status_code,
            str(body.get("error") or f"HTTP {response.status_code}"),
            str(body.get("reason") or body.get("detail") or ""),
            body.get("filename"),
        )
    status = response.status_code
    raise ProtocolError(f"the upload API at {api_url} answered {status}: {error_text(response)}")


def _jobs(response: httpx.Response, expected: int) -> list[Job]:
    try:
        listed = response.json()["jobs"]
        jobs = [Job(j["id"], j["filename"], j["result_url"], j["events_url"]) for j in listed]
    except (ValueError, KeyError, TypeError) as e:
        raise ProtocolError(f"{response.url} answered 202 without jobs: {response.text[:200]}") from e
    if len(jobs) != expected:
        raise ProtocolError(f"{response.url} accepted {expected} files but returned {len(jobs)} jobs")
    return jobs
