"""The three output formats: CSV parses back, JSON lines are JSON, the table is aligned and shows top-N."""

from __future__ import annotations

import csv
import io
import json

import pytest

from classify_cli.output import CSV_COLUMNS, create_writer
from classify_cli.progress import Progress
from classify_cli.rows import Row

pytestmark = pytest.mark.timeout(60)

TOP = [
    {"label": "tabby", "wnid": "n02123045", "index": 281, "score": 0.75},
    {"label": "tiger_cat", "wnid": "n02123159", "index": 282, "score": 0.2},
    {"label": "Egyptian_cat", "wnid": "n02124075", "index": 285, "score": 0.03},
]
ROWS = [
    Row("cats/chelsea.jpg", "job-1", "done", "tabby", 0.75, TOP),
    Row('odd, "name".png', None, "failed", error="rejected: invalid_image: the image is damaged"),
    Row("slow.jpg", "job-3", "timeout", error="no result within 5 s"),
]


def render(fmt: str, top: int = 1) -> list[str]:
    lines: list[str] = []
    writer = create_writer(fmt, lines.append, [r.file for r in ROWS], top)  # type: ignore[arg-type]
    writer.start()
    for row in ROWS:
        writer.write(row)
    return lines


def test_csv_parses_back_with_a_header() -> None:
    records = list(csv.DictReader(io.StringIO("\n".join(render("csv")) + "\n")))
    assert list(records[0]) == list(CSV_COLUMNS)
    assert [r["file"] for r in records] == [r.file for r in ROWS]
    assert records[0]["label"] == "tabby"
    assert float(records[0]["score"]) == 0.75
    assert records[0]["error"] == ""
    assert records[1]["status"] == "failed"
    assert records[1]["id"] == ""
    assert "invalid_image" in records[1]["error"]


def test_jsonl_is_one_json_object_per_file() -> None:
    objects = [json.loads(line) for line in render("jsonl")]
    assert [o["file"] for o in objects] == [r.file for r in ROWS]
    assert all(set(o) == {"file", "id", "status", "label", "score", "top", "error"} for o in objects)
    assert objects[0]["top"][1]["label"] == "tiger_cat"
    assert objects[2]["status"] == "timeout"
    assert objects[2]["label"] is None


def test_table_columns_line_up_and_top_n_labels_follow_their_row() -> None:
    lines = render("table", top=2)
    assert lines[0].split() == ["FILE", "LABEL", "SCORE", "STATUS"]
    label_at = lines[0].index("LABEL")
    assert lines[1][label_at:].startswith("tabby")
    assert "0.7500" in lines[1]
    assert lines[1].endswith("done")
    assert lines[2].strip().startswith("tiger_cat")
    assert lines[2][label_at:].startswith("tiger_cat")
    assert lines[3][label_at - 2 :].startswith("  -")
    assert "failed: rejected" in lines[3]
    assert lines[4].endswith("timeout: no result within 5 s")
    status_at = lines[0].index("STATUS")
    assert [lines[n][status_at:].split(":")[0] for n in (1, 3, 4)] == ["done", "failed", "timeout"]
    assert len(lines) == 5, "a failed row has no top labels beneath it"


def test_long_paths_are_shortened_from_the_left_so_the_file_name_shows() -> None:
    lines: list[str] = []
    name = "a/" * 40 + "cat.jpg"
    writer = create_writer("table", lines.append, [name])
    writer.write(Row(name, "j", "done", "tabby", 0.5))
    assert lines[0].startswith("…")
    assert "cat.jpg" in lines[0]


@pytest.mark.parametrize("enabled", [False, True])
def test_progress_prints_every_line_to_the_output(enabled: bool) -> None:
    out = io.StringIO()
    with Progress(2, enabled, out) as progress:
        progress.emit("one")
        progress.uploaded()
        progress.classified()
        progress.emit("two")
    assert out.getvalue().splitlines() == ["one", "two"]
