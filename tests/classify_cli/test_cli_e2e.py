"""The `classify` command as a user runs it, against the whole running system: real photos, real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from launcher.system import System

# The system (broker, model, four processes) may still be starting when the first of these tests asks for it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CAT_LABELS = {"tiger_cat", "Egyptian_cat", "tabby"}


def classify(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command as a separate process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "classify_cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Real photos as JPEG and PNG, one corrupt JPEG, and a file that is not an image."""
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.jpg", quality=92)  # type: ignore[no-untyped-call]
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")  # type: ignore[no-untyped-call]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (tmp_path / "notes.txt").write_text("not an image, and not named .jpg: skipped")
    return tmp_path


def test_a_folder_as_json_lines_reports_each_photo_and_the_corrupt_file_and_exits_1(
    running_system: System, folder: Path
) -> None:
    done = classify(str(folder), "--api-url", running_system.api_url, "--format", "jsonl", "--no-progress")
    assert "Traceback" not in done.stderr, done.stderr
    rows = {Path(row["file"]).name: row for row in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == {"chelsea.jpg", "coffee.png", "bad.jpg"}, done.stdout

    assert rows["chelsea.jpg"]["status"] == "done", rows["chelsea.jpg"]
    assert rows["chelsea.jpg"]["label"] in CAT_LABELS
    assert rows["coffee.png"]["status"] == "done", rows["coffee.png"]
    assert rows["coffee.png"]["label"] == "espresso"
    for row in (rows["chelsea.jpg"], rows["coffee.png"]):
        assert row["id"]
        assert 0 < row["score"] <= 1
        assert row["top"][0]["label"] == row["label"]
        assert row["error"] is None

    bad = rows["bad.jpg"]
    assert bad["status"] == "failed"
    assert bad["id"] is None, "the API refused it, so it never became a job"
    assert bad["error"].startswith("rejected: ")
    assert done.returncode == 1, done.stderr


def test_paths_from_stdin_as_a_table_with_top_3_exit_0(running_system: System, folder: Path) -> None:
    listed = f"{folder / 'chelsea.jpg'}\n{folder / 'coffee.png'}\n"
    done = classify("-", "--api-url", running_system.api_url, "--top", "3", "--batch-size", "1", stdin=listed)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["FILE", "LABEL", "SCORE", "STATUS"]
    rows = [line for line in lines[1:] if not line.startswith(" ")]
    runners_up = [line for line in lines[1:] if line.startswith(" ")]
    assert len(rows) == 2
    assert all(row.endswith("done") for row in rows)
    assert len(runners_up) == 4, "two more labels beneath each photo's row"
    coffee = next(row for row in rows if "coffee.png" in row)
    assert coffee.split()[1] == "espresso"
