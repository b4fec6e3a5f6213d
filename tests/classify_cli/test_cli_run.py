"""Whole runs against a fake system: rows for every file, refused files isolated, and the exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_fakes import API, FakeSystem

from classify_cli import __main__ as cli
from classify_cli.client import RetryPolicy
from classify_cli.errors import AuthenticationError, ExitCode, SystemUnreachableError
from classify_cli.files import Discovery, discover
from classify_cli.output import Writer
from classify_cli.progress import Progress
from classify_cli.rows import Row
from classify_cli.runner import Run, RunOptions

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(base_delay_s=0.01)


def images(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"image " + name.encode())
    return root


class Rows(list[Row]):
    """A writer that keeps the rows."""

    def start(self) -> None:
        """No header."""

    def write(self, row: Row) -> None:
        """Keep the row."""
        self.append(row)


def run_on(found: Discovery, system: FakeSystem, **options: Any) -> tuple[ExitCode, Rows]:
    """Classify these files against the fake system; the exit code and the rows written."""
    rows = Rows()
    settings: dict[str, Any] = {"batch_size": 8, "timeout_s": 5.0, "policy": FAST, "linger_s": 0.01} | options
    run = Run(RunOptions(API, **settings), rows, Progress(10, False), system.transport)
    return asyncio.run(run.run(found)), rows


def run(root: Path, system: FakeSystem, recursive: bool = False, **options: Any) -> tuple[ExitCode, Rows]:
    """Classify a folder against the fake system."""
    return run_on(discover([str(root)], recursive, io.StringIO()), system, **options)


def by_file(rows: list[Row]) -> dict[str, Row]:
    return {Path(r.file).name: r for r in rows}


def test_every_file_classified_exits_0_with_one_row_each_and_one_stream_per_100_jobs(tmp_path: Path) -> None:
    system = FakeSystem()
    # A long linger: the groups close by size (100) and at the end of the uploads, never by time.
    folder = images(tmp_path, *(f"{n:03}.jpg" for n in range(150)))
    code, rows = run(folder, system, batch_size=16, linger_s=30)
    assert code == ExitCode.OK
    assert len(rows) == 150
    assert all(r.ok and r.label == "tabby" for r in rows)
    assert len({r.id for r in rows}) == 150
    assert [len(u) for u in system.uploads()] == [16] * 9 + [6]
    streams = [r for r in system.requests if r.url.path == "/v1/events"]
    assert sorted(len(r.url.params["ids"].split(",")) for r in streams) == [50, 100]


def test_a_refused_file_is_a_failed_row_and_the_rest_of_its_batch_is_sent_again(tmp_path: Path) -> None:
    system = FakeSystem()
    code, rows = run(images(tmp_path, "a.jpg", "bad.jpg", "c.jpg"), system)
    assert code == ExitCode.SOME_FAILED
    assert system.uploads() == [["a.jpg", "bad.jpg", "c.jpg"], ["a.jpg", "c.jpg"]]
    rows_by_file = by_file(rows)
    assert rows_by_file["bad.jpg"].status == "failed"
    assert rows_by_file["bad.jpg"].id is None
    assert rows_by_file["bad.jpg"].error == "rejected: invalid_image: the image is damaged or truncated"
    assert rows_by_file["a.jpg"].ok
    assert rows_by_file["c.jpg"].ok


def test_two_refused_files_with_the_same_name_are_found_by_splitting_the_batch(tmp_path: Path) -> None:
    system = FakeSystem()
    folder = images(tmp_path, "x/bad.jpg", "x/ok.jpg", "y/bad.jpg", "y/ok2.jpg")
    code, rows = run(folder, system, recursive=True)
    assert code == ExitCode.SOME_FAILED
    assert sorted((Path(r.file).relative_to(tmp_path).as_posix(), r.status) for r in rows) == [
        ("x/bad.jpg", "failed"),
        ("x/ok.jpg", "done"),
        ("y/bad.jpg", "failed"),
        ("y/ok2.jpg", "done"),
    ]


def test_too_many_files_per_request_makes_the_batches_smaller_not_a_file_fail(tmp_path: Path) -> None:
    system = FakeSystem(max_files=4)
    code, rows = run(images(tmp_path, *(f"{n}.jpg" for n in range(12))), system, batch_size=8)
    assert code == ExitCode.OK
    assert len(rows) == 12
    assert [len(u) for u in system.uploads()] == [8, 4, 4, 4]


def test_a_failed_classification_and_an_unreadable_file_exit_1(tmp_path: Path) -> None:
    images(tmp_path, "a.jpg", "fail.jpg", "gone.jpg")
    found = discover([str(tmp_path)], False, io.StringIO())
    (tmp_path / "gone.jpg").unlink()  # found, then unreadable by the time it is read
    code, rows = run_on(found, FakeSystem())
    assert code == ExitCode.SOME_FAILED
    rows_by_file = by_file(rows)
    assert rows_by_file["fail.jpg"].status == "failed"
    assert rows_by_file["fail.jpg"].error == "image could not be decoded"
    assert rows_by_file["gone.jpg"].status == "failed"
    assert "cannot read" in str(rows_by_file["gone.jpg"].error)
    assert rows_by_file["a.jpg"].ok


def test_jobs_without_a_result_in_time_are_timeout_rows_and_exit_1(tmp_path: Path) -> None:
    code, rows = run(images(tmp_path, "a.jpg", "slow.jpg"), FakeSystem(), timeout_s=0.3)
    assert code == ExitCode.SOME_FAILED
    assert by_file(rows)["slow.jpg"].status == "timeout"
    assert by_file(rows)["slow.jpg"].id
    assert by_file(rows)["a.jpg"].ok


def test_an_unreachable_api_raises_the_exit_3_error(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    system = FakeSystem()
    system.handle = refuse  # type: ignore[method-assign]
    with pytest.raises(SystemUnreachableError) as info:
        run(images(tmp_path, "a.jpg"), system)
    assert info.value.exit_code == ExitCode.UNREACHABLE


def test_a_wrong_api_key_is_a_usage_error_and_the_right_one_is_sent_everywhere(tmp_path: Path) -> None:
    images(tmp_path, "a.jpg")
    with pytest.raises(AuthenticationError):
        run(tmp_path, FakeSystem(api_key="secret"), api_key="wrong")
    system = FakeSystem(api_key="secret")
    code, _ = run(tmp_path, system, api_key="secret")
    assert code == ExitCode.OK
    assert {r.headers["X-API-Key"] for r in system.requests} == {"secret"}


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> FakeSystem:
    """`main()` wired to a fake system instead of the network."""
    system = FakeSystem()

    def fake_run(options: RunOptions, writer: Writer, progress: Progress) -> Run:
        fast = RunOptions(options.api_url, options.api_key, options.batch_size, options.timeout_s, FAST, 0.01)
        return Run(fast, writer, progress, system.transport)

    monkeypatch.setattr(cli, "Run", fake_run)
    return system


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_main_prints_each_format_and_exits_1_for_a_refused_file(
    fake_cli: FakeSystem, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    images(tmp_path, "a.jpg", "bad.jpg")
    code = cli.main([str(tmp_path), "--format", fmt, "--api-url", API, "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    if fmt == "jsonl":
        assert {json.loads(line)["status"] for line in out} == {"done", "failed"}
    else:
        assert len(out) == 3
        assert "a.jpg" in "".join(out)
        assert "bad.jpg" in "".join(out)


def test_main_reads_paths_from_stdin_and_exits_0(
    fake_cli: FakeSystem, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images(tmp_path, "a.jpg", "b.png")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tmp_path / 'a.jpg'}\n{tmp_path / 'b.png'}\n"))
    assert cli.main(["-", "--api-url", API, "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["FILE", "LABEL", "SCORE", "STATUS"]
    assert len(out) == 5


def exit_code(args: list[str]) -> int | str | None:
    """What `classify ARGS` exits with, whether `main` returns it or argparse exits."""
    try:
        return cli.main(args)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["{tmp}/empty"],
        ["{tmp}/missing.jpg"],
        ["{tmp}", "--top", "0"],
        ["{tmp}", "--api-url", "localhost:8000"],
        ["{tmp}", "--format", "xml"],
    ],
)
def test_usage_errors_and_nothing_to_do_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert exit_code([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(("classify: ", "usage: classify"))
    assert "Traceback" not in err


def test_an_unreachable_system_exits_3_with_one_line_naming_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images(tmp_path, "a.jpg")
    url = "http://127.0.0.1:9"  # the discard port: nothing listens there
    assert cli.main([str(tmp_path), "--api-url", url, "--no-progress"]) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"classify: cannot reach the upload API at {url}")


def test_exit_codes_have_the_documented_values() -> None:
    codes = (ExitCode.OK, ExitCode.SOME_FAILED, ExitCode.USAGE, ExitCode.UNREACHABLE)
    assert [int(c) for c in codes] == [0, 1, 2, 3]


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "classify_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert "--batch-size" in done.stdout
    assert "exit codes" in done.stdout
