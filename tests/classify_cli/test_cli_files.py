"""File discovery: extensions, folders with and without recursion, paths listed on stdin, problems."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from classify_cli.files import discover, expand_stdin, is_image_name, read_path_list

pytestmark = pytest.mark.timeout(60)


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.mark.parametrize("name", ["a.jpg", "a.JPEG", "a.Png", "a.gif", "a.webp", "a.bmp", "a.tif", "a.TIFF"])
def test_image_extensions_in_any_case(name: str) -> None:
    assert is_image_name(Path(name))


@pytest.mark.parametrize("name", ["a.txt", "a.jpg.bak", "jpg", "a.svg", "a.heic"])
def test_other_files_are_not_images(name: str) -> None:
    assert not is_image_name(Path(name))


def test_a_folder_gives_its_images_sorted_and_skips_other_and_hidden_files(tmp_path: Path) -> None:
    touch(tmp_path, "b.PNG", "a.jpg", "notes.txt", ".hidden.jpg", "._a.jpg", "sub/c.jpg")
    found = discover([str(tmp_path)], recursive=False, stdin=io.StringIO())
    assert [p.name for p in found.files] == ["a.jpg", "b.PNG"]
    assert found.problems == []


def test_recursive_descends_into_subfolders_but_not_hidden_ones(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "sub/c.jpg", "sub/deeper/d.webp", ".git/e.jpg")
    found = discover([str(tmp_path)], recursive=True, stdin=io.StringIO())
    names = [p.relative_to(tmp_path).as_posix() for p in found.files]
    assert names == ["a.jpg", "sub/c.jpg", "sub/deeper/d.webp"]


def test_a_file_named_explicitly_is_kept_whatever_its_extension(tmp_path: Path) -> None:
    # The API decides from the bytes; a file the user named is the user's call.
    touch(tmp_path, "photo.dat")
    found = discover([str(tmp_path / "photo.dat")], recursive=False, stdin=io.StringIO())
    assert found.files == [tmp_path / "photo.dat"]


def test_missing_paths_are_problems_and_duplicates_are_kept_once(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg")
    args = [str(tmp_path / "a.jpg"), str(tmp_path), str(tmp_path / "missing.jpg")]
    found = discover(args, recursive=False, stdin=io.StringIO())
    assert found.files == [tmp_path / "a.jpg"]
    assert found.problems == [(str(tmp_path / "missing.jpg"), "no such file or directory")]


def test_dash_reads_paths_from_stdin_once(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "b.png", "dir/c.gif")
    stdin = io.StringIO(f"{tmp_path / 'a.jpg'}\n\n  {tmp_path / 'dir'}  \n")
    found = discover(["-", str(tmp_path / "b.png"), "-"], recursive=False, stdin=stdin)
    assert [p.name for p in found.files] == ["a.jpg", "c.gif", "b.png"]


def test_path_list_skips_blank_lines() -> None:
    assert read_path_list(io.StringIO("a.jpg\n\n b c.png \n")) == ["a.jpg", "b c.png"]
    assert expand_stdin(["x", "-"], io.StringIO("y\n")) == ["x", "y"]
