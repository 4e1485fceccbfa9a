"""runtime/atomic.py: a reader sees the old file (or folder) or the new one, never half of one."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from runtime.atomic import atomic_dir, atomic_open, atomic_write_bytes, atomic_write_json


@pytest.fixture
def umask():
    """Set the process umask for one test, then put it back."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_atomic_open_replaces_only_when_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old contents")
    with atomic_open(path, "wb") as f:
        f.write(b"new ")
        f.flush()
        assert path.read_bytes() == b"old contents"  # readers still see the old file
        (tmp,) = leftovers(tmp_path)
        assert tmp.startswith(".state.bin.") and tmp.endswith(".tmp")  # a hidden temp beside it
        f.write(b"contents")
    assert path.read_bytes() == b"new contents"
    assert leftovers(tmp_path) == []


def test_an_exception_inside_atomic_open_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C mid-write too
        with atomic_open(tmp_path / "fresh.bin") as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert not (tmp_path / "fresh.bin").exists() and leftovers(tmp_path) == []


def test_atomic_open_creates_folders_and_writes_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "notes.txt"
    with atomic_open(path, "w") as f:
        f.write("naïve 猫 🙂\n")
    assert path.read_bytes() == "naïve 猫 🙂\n".encode("utf-8")


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path: Path, umask, mask: int, mode: int) -> None:
    umask(mask)
    atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == mode
    with atomic_dir(tmp_path / "folder") as d:
        (d / "x").write_text("x", encoding="utf-8")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask


def test_atomic_write_json_is_indented_utf8_with_a_newline(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"name": "café", "n": [1, 2]})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"name": "café", "n": [1, 2]}
    assert "café" in text and text.endswith("}\n") and '\n  "name"' in text


def test_atomic_dir_replaces_an_existing_folder_and_clears_stale_temps(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    stale = tmp_path / ".prepared.tmp-crashed"  # what a killed build leaves behind
    stale.mkdir()
    (stale / "partial.bin").write_bytes(b"half")
    other = tmp_path / ".other.tmp-keep"  # another folder's temp is not ours to delete
    other.mkdir()
    with atomic_dir(target) as build:
        assert not stale.exists()
        assert build.parent == tmp_path and build.name.startswith(".prepared.tmp-")
        (build / "new.bin").write_bytes(b"new")
        (build / "sub").mkdir()
        (build / "sub" / "deep.txt").write_text("deep", encoding="utf-8")
        assert (target / "old.bin").read_bytes() == b"old"  # the old folder is whole until the end
    assert sorted(p.name for p in target.iterdir()) == ["new.bin", "sub"]
    assert (target / "sub" / "deep.txt").read_text(encoding="utf-8") == "deep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep", "prepared"]


def test_an_exception_inside_atomic_dir_leaves_the_old_folder_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(OSError, match="out of space"):
        with atomic_dir(target) as build:
            (build / "new.bin").write_bytes(b"new")
            raise OSError("out of space")
    assert [p.name for p in target.iterdir()] == ["old.bin"] and (target / "old.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp folder left
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "never") as build:
            (build / "x").write_text("x", encoding="utf-8")
            raise ValueError
    assert not (tmp_path / "never").exists()


def test_stale_temps_of_the_named_files_go_and_nothing_else(tmp_path: Path) -> None:
    """After a kill, the next run removes atomic_open's leftovers for its own files, and only those."""
    from runtime.atomic import remove_stale_temps

    ours = [".train_state.pt.ab3_9xyz.tmp", ".model.safetensors.00000000.tmp"]
    theirs = [".notes.txt.ab3_9xyz.tmp", ".train_state.pt.tmp", "train_state.pt.ab3_9xyz.tmp",
              ".train_state.pt.TOOLONGNAME.tmp", "mine.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".config.json.abcdefgh.tmp").mkdir()  # a folder with the pattern's name: not a temp file
    (tmp_path / ".config.json.zzzzzzzz.tmp").symlink_to(tmp_path / "mine.tmp")
    removed = remove_stale_temps(tmp_path, ["train_state.pt", "model.safetensors", "config.json"])
    assert sorted(p.name for p in removed) == sorted(ours)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(theirs + [".config.json.abcdefgh.tmp", ".config.json.zzzzzzzz.tmp"])
    assert remove_stale_temps(tmp_path / "missing", ["x"]) == []


def test_a_temp_file_left_by_a_kill_has_the_pattern_the_cleanup_removes(tmp_path: Path) -> None:
    """The name atomic_open really uses (not an assumed one) is the one remove_stale_temps matches."""
    from runtime.atomic import remove_stale_temps

    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "train_state.pt") as f:
            f.write(b"half")
            left = [p for p in tmp_path.iterdir()]
            for p in left:  # keep a copy, as a SIGKILL (which skips the cleanup) would leave it
                (tmp_path / (p.name + ".kept")).write_bytes(p.read_bytes())
            raise RuntimeError
    for kept in tmp_path.glob("*.kept"):
        kept.rename(tmp_path / kept.name[:-len(".kept")])
    assert len(left) == 1 and left[0].exists()
    assert remove_stale_temps(tmp_path, ["train_state.pt"]) == left
