"""Folders the user gives and names read out of files: where the programs may write, what they may follow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.paths import is_plain_name, member, writable_dir_problem


@pytest.mark.parametrize("name", ["tokenizer.json", "a b.txt", ".hidden", "..x", "x.."])
def test_plain_names_are_accepted(name: str) -> None:
    assert is_plain_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "x\0y", None, 3, ["a"]])
def test_anything_that_could_leave_the_folder_is_not_a_plain_name(name) -> None:
    assert not is_plain_name(name)
    assert member("/tmp", name) is None


def test_member_follows_links_only_inside_the_folder(tmp_path: Path) -> None:
    folder, outside = tmp_path / "run", tmp_path / "secret.txt"
    folder.mkdir()
    outside.write_text("not yours", encoding="utf-8")
    (folder / "real.json").write_text("{}", encoding="utf-8")
    (folder / "inside").symlink_to(folder / "real.json")
    (folder / "relative_out").symlink_to(Path("..") / "secret.txt")
    (folder / "absolute_out").symlink_to(outside)
    assert member(folder, "real.json") == folder / "real.json"
    assert member(folder, "missing.json") == folder / "missing.json"  # missing is the caller's to report
    assert member(folder, "inside") == folder / "inside"
    assert member(folder, "relative_out") is None and member(folder, "absolute_out") is None


def test_a_folder_that_is_reached_through_a_link_is_still_its_own_inside(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("x", encoding="utf-8")
    (real / "b").symlink_to(real / "a.txt")
    (tmp_path / "alias").symlink_to(real)
    assert member(tmp_path / "alias", "b") == tmp_path / "alias" / "b"


def test_writable_dir_problems(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("x", encoding="utf-8")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert writable_dir_problem(tmp_path) is None
    assert writable_dir_problem(tmp_path / "new" / "deeper") is None  # can be created
    assert writable_dir_problem(file) == f"{file} is a file, not a folder"
    assert writable_dir_problem(file / "sub") == f"{file} is a file, so no folder can be made inside it"
    assert writable_dir_problem(tmp_path / "dangling") == f"{tmp_path / 'dangling'} is a broken link"
    assert writable_dir_problem(tmp_path / "dangling" / "x") == f"{tmp_path / 'dangling'} is a broken link"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere; a read-only folder cannot be made by chmod")
def test_a_read_only_folder_is_reported(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "is not writable" in writable_dir_problem(ro / "out")
    finally:
        ro.chmod(0o700)
