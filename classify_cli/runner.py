"""One run of the command: upload files in batches, follow their jobs, report every file exactly once."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from classify_cli.client import API_KEY_HEADER, Job, RetryPolicy, Sleep, upload
from classify_cli.errors import CliError, ExitCode, UploadRejectedError
from classify_cli.files import Discovery
from classify_cli.follow import MAX_IDS_PER_STREAM, Follower
from classify_cli.output import Writer
from classify_cli.progress import Progress
from classify_cli.rows import Row

logger = logging.getLogger(__name__)

USER_AGENT = "classify-cli/0.1"
# Refusals of the request as a whole: the file the API names (the one it was reading) is not at fault.
REQUEST_TOO_BIG = frozenset({"too_many_files", "body_too_large"})


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What a run needs to know besides the files."""

    api_url: str
    api_key: str | None = None
    batch_size: int = 8
    timeout_s: float = 300.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # How long a group of jobs waits for more before its stream opens (as Kafka's linger.ms does for batches).
    linger_s: float = 1.0
    # Streams open at once; later groups wait, and their results are replayed when they connect.
    max_streams: int = 8


@dataclass(frozen=True, slots=True)
class Loaded:
    """A file read into memory, ready to upload."""

    display: str
    name: str
    data: bytes


class Run:
    """Uploads, follows and reports; `run()` returns the exit code, or raises `CliError`."""

    def __init__(
        self,
        options: RunOptions,
        writer: Writer,
        progress: Progress,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.options = options
        self.writer = writer
        self.progress = progress
        self.transport = transport
        self.sleep = sleep
        self.batch_size = options.batch_size
        self.files_by_job: dict[str, str] = {}
        self.reported: set[str] = set()
        self.failed = 0
        self.chunk: list[Job] = []
        self.linger: asyncio.TimerHandle | None = None
        self.followers: list[asyncio.Task[None]] = []

    async def run(self, discovery: Discovery) -> ExitCode:
        """Report the problems found, upload and follow the files, then report what timed out."""
        for display, why in discovery.problems:
            self.progress.uploaded()
            self.report(Row.failed(display, why))
        async with self._client() as self.http:
            self.streams = asyncio.Semaphore(self.options.max_streams)
            try:
                async with asyncio.TaskGroup() as self.tg:
                    await self._upload_all(discovery.files)
                    self._flush_chunk()
                    await self._wait_for_results()
            except BaseExceptionGroup as group:
                raise _first_cli_error(group) from None
            finally:
                self._cancel_linger()
        for job_id, display in self.files_by_job.items():
            if job_id not in self.reported:
                self.report(Row.timed_out(display, job_id, self.options.timeout_s))
        return ExitCode.OK if self.failed == 0 else ExitCode.SOME_FAILED

    def _client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": USER_AGENT}
        if self.options.api_key:
            headers[API_KEY_HEADER] = self.options.api_key
        timeout = httpx.Timeout(60.0, connect=10.0)
        return httpx.AsyncClient(headers=headers, timeout=timeout, transport=self.transport)

    def report(self, row: Row) -> None:
        """Print a row and count it."""
        self.writer.write(row)
        self.progress.classified()
        if row.id:
            self.reported.add(row.id)
        if not row.ok:
            self.failed += 1

    async def _upload_all(self, files: Sequence[Path]) -> None:
        start = 0
        while start < len(files):
            batch = files[start : start + self.batch_size]  # batch_size shrinks if the API takes fewer files
            start += len(batch)
            await self._upload([item for path in batch if (item := await self._read(path)) is not None])

    async def _read(self, path: Path) -> Loaded | None:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as e:
            self.progress.uploaded()
            self.report(Row.failed(str(path), f"cannot read: {e.strerror or e}"))
            return None
        return Loaded(str(path), path.name, data)

    async def _upload(self, items: list[Loaded]) -> None:
        """Upload; when the API refuses one named file, report it and send the rest; else split the batch."""
        while items:
            try:
                jobs = await upload(
                    self.http,
                    self.options.api_url,
                    [(i.name, i.data) for i in items],
                    self.options.policy,
                    self.sleep,
                )
            except UploadRejectedError as e:
                culprit = None if e.error in REQUEST_TOO_BIG else _culprit(items, e.filename)
                if culprit is None and len(items) > 1:
                    await self._split(items, e)
                    return
                culprit = culprit or items[0]
                self.progress.uploaded()
                self.report(Row.failed(culprit.display, f"rejected: {e}"))
                items = [i for i in items if i is not culprit]
            else:
                self._accepted(items, jobs)
                return

    async def _split(self, items: list[Loaded], error: UploadRejectedError) -> None:
        # The API did not say which file it refused (or said a name two files share): halve until it can.
        if error.error in REQUEST_TOO_BIG:
            self.batch_size = max(1, len(items) // 2)  # too many files per request: send fewer from now on
            logger.warning(
                "the API refused %d files in one request (%s); sending %d at a time",
                len(items),
                error,
                self.batch_size,
            )
        half = len(items) // 2
        await self._upload(items[:half])
        await self._upload(items[half:])

    def _accepted(self, items: Sequence[Loaded], jobs: Sequence[Job]) -> None:
        for item, job in zip(items, jobs, strict=True):
            self.files_by_job[job.id] = item.display
            self.progress.uploaded()
            self._add_to_chunk(job)

    def _add_to_chunk(self, job: Job) -> None:
        if self.chunk and job.results_base != self.chunk[0].results_base:
            self._flush_chunk()  # one stream reads from one results service
        self.chunk.append(job)
        if len(self.chunk) >= MAX_IDS_PER_STREAM:
            self._flush_chunk()
        elif self.linger is None:
            self.linger = asyncio.get_running_loop().call_later(self.options.linger_s, self._flush_chunk)

    def _flush_chunk(self) -> None:
        """Start following the jobs gathered so far with one stream."""
        self._cancel_linger()
        jobs, self.chunk = self.chunk, []
        if not jobs:
            return
        try:
            self.followers.append(self.tg.create_task(self._follow(jobs)))
        except RuntimeError:  # the task group is shutting down because the run is failing: nothing to follow
            logger.debug("not following %d jobs: the run is ending", len(jobs))

    def _cancel_linger(self) -> None:
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None

    async def _follow(self, jobs: Sequence[Job]) -> None:
        async with self.streams:
            await Follower(self.http, jobs, self._on_result, self.options.policy, self.sleep).run()

    def _on_result(self, body: dict[str, Any]) -> None:
        job_id = str(body.get("id"))
        if job_id in self.files_by_job and job_id not in self.reported:
            self.report(Row.from_result(self.files_by_job[job_id], body))

    async def _wait_for_results(self) -> None:
        # --timeout counts from the last upload: a large folder's uploads do not eat the wait for results.
        if self.followers:
            _, late = await asyncio.wait(self.followers, timeout=self.options.timeout_s)
            for task in late:
                task.cancel()


def _culprit(items: Sequence[Loaded], filename: str | None) -> Loaded | None:
    """The one file the API named, comparing names as it normalises them; None if none or several match."""
    if not filename:
        return None
    wanted = unicodedata.normalize("NFC", filename)
    matches = [i for i in items if unicodedata.normalize("NFC", i.name) == wanted]
    return matches[0] if len(matches) == 1 else None


def _first_cli_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to end the run with: the first `CliError` in the group, else the group itself."""
    for error in group.exceptions:
        found = _first_cli_error(error) if isinstance(error, BaseExceptionGroup) else error
        if isinstance(found, CliError):
            return found
    return group
