"""Following files the way kubelet updates them: in place, and by atomic symlink swap."""

import os
from pathlib import Path

import pytest

from apiproxy.proxy.upstream import TokenSource
from apiproxy.reload import Reloader, WatchedFile
from apiproxy.status import StatusError


def parse_number(data: bytes, source: str) -> int:
    try:
        return int(data)
    except ValueError:
        raise ValueError(f"{source}: not a number") from None


def kubelet_mount(root: Path, name: str, content: bytes, generation: int) -> Path:
    """Lay out a projected-volume file the way kubelet does and atomically swap it to ``content``."""
    data_dir = root / f"..2026_11_23_{generation}"
    data_dir.mkdir()
    (data_dir / name).write_bytes(content)
    tmp = root / "..data_tmp"
    tmp.symlink_to(data_dir.name)
    os.replace(tmp, root / "..data")
    link = root / name
    if not link.is_symlink():
        link.symlink_to(f"..data/{name}")
    return link


def test_in_place_edit_is_picked_up(tmp_path: Path) -> None:
    f = tmp_path / "n"
    f.write_bytes(b"1")
    watched = WatchedFile("number", f, parse_number)
    assert watched.load() == 1
    assert watched.refresh() is False
    f.write_bytes(b"22")
    assert watched.refresh() is True
    assert watched.current == 22


def test_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    link = kubelet_mount(tmp_path, "n", b"1", 1)
    watched = WatchedFile("number", link, parse_number)
    assert watched.load() == 1
    kubelet_mount(tmp_path, "n", b"2", 2)
    assert watched.refresh() is True
    assert watched.current == 2


def test_broken_version_keeps_the_last_good_one_and_reports_once(tmp_path: Path) -> None:
    f = tmp_path / "n"
    f.write_bytes(b"1")
    results: list[tuple[str, str | None]] = []
    watched = WatchedFile("number", f, parse_number)
    watched.on_result = lambda name, err: results.append((name, err))
    watched.load()
    f.write_bytes(b"oops")
    assert watched.refresh() is False
    assert watched.current == 1
    assert watched.last_error is not None and "not a number" in watched.last_error
    os.utime(f, ns=(1, 1))  # a touch without a content change is not a second report
    watched.refresh()
    f.write_bytes(b"3")
    assert watched.refresh() is True
    assert watched.last_error is None
    assert results == [("number", None), ("number", results[1][1]), ("number", None)]


def test_deleted_file_keeps_serving_and_recovers(tmp_path: Path) -> None:
    f = tmp_path / "n"
    f.write_bytes(b"5")
    watched = WatchedFile("number", f, parse_number)
    watched.load()
    f.unlink()
    assert watched.refresh() is False
    assert watched.current == 5
    assert "cannot read" in (watched.last_error or "")
    f.write_bytes(b"6")
    assert watched.refresh() is True and watched.current == 6


def test_first_load_of_a_broken_file_fails(tmp_path: Path) -> None:
    f = tmp_path / "n"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a number"):
        WatchedFile("number", f, parse_number).load()
    with pytest.raises(ValueError, match="cannot read"):
        WatchedFile("number", tmp_path / "missing", parse_number).load()


def test_reloader_runs_callbacks_only_on_change(tmp_path: Path) -> None:
    f = tmp_path / "n"
    f.write_bytes(b"1")
    watched = WatchedFile("number", f, parse_number)
    watched.load()
    seen: list[int] = []
    reloader = Reloader(interval=3600)
    reloader.add(watched, lambda: seen.append(watched.current))
    reloader.check_now()
    f.write_bytes(b"2")
    reloader.check_now()
    reloader.check_now()
    assert seen == [2]


def test_token_source_follows_rotation_and_keeps_last_good(tmp_path: Path) -> None:
    link = kubelet_mount(tmp_path, "token", b"first\n", 1)
    tokens = TokenSource(link, check_interval=0)
    assert tokens.authorization() == "Bearer first"
    kubelet_mount(tmp_path, "token", b"second", 2)
    assert tokens.authorization() == "Bearer second"
    kubelet_mount(tmp_path, "token", b"", 3)
    assert tokens.authorization() == "Bearer second"
    assert tokens.last_error is not None and "empty" in tokens.last_error


def test_token_source_without_a_token_answers_503(tmp_path: Path) -> None:
    tokens = TokenSource(tmp_path / "absent", check_interval=0)
    with pytest.raises(StatusError) as err:
        tokens.authorization()
    assert err.value.code == 503
    assert "no credentials" in err.value.message


def test_token_source_rereads_only_after_its_interval(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("one")
    tokens = TokenSource(f, check_interval=3600)
    assert tokens.authorization() == "Bearer one"
    f.write_text("two")
    assert tokens.authorization() == "Bearer one"  # within the interval: no file access
    tokens.refresh()
    assert tokens.authorization() == "Bearer two"
