"""The committed flame graphs name no path of the machine they were made on."""

from __future__ import annotations

from pathlib import Path

from benchmarks.pipeline_bench import strip_local_paths

ROOT = Path(__file__).resolve().parents[2]


def test_the_flame_graphs_title_keeps_the_command_without_this_machines_paths(tmp_path: Path) -> None:
    title = (
        f'<text id="title" x="50%" y="24.00">{ROOT}/.venv/bin/py-spy record --pid 1 --output '
        f"{ROOT}/docs/benchmarks/profiles/api.svg</text>"
    )
    (tmp_path / "api.svg").write_text(f"<svg>{title}</svg>")
    strip_local_paths(tmp_path)
    cleaned = (tmp_path / "api.svg").read_text()
    assert str(ROOT) not in cleaned
    assert (
        '<text id="title" x="50%" y="24.00">py-spy record --pid 1 --output docs/benchmarks/profiles/api.svg'
        in cleaned
    )
