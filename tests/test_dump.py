"""Nothing good is ever deleted by a failed dump: --force replaces a store only once the new one is complete, the
leftover pieces of a finished dump are removed by the next, and a dump stopped by a full disk at the merge resumes
once enough space is free for what it still needs."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

import pytest
from factories import mounted

from mtd_cache.cli.common import run_command
from mtd_cache.core.errors import MtdError
from mtd_cache.store import TeacherStore, diff_stores
from mtd_cache.teachers.dump import run_dump


def _dump(tiny: dict, out: Path, *extra, stop: BaseException | None = None, monkeypatch=None, capsys=None) -> int:
    """``mtd-cache dump`` of the tiny digits teachers, in this process; ``stop``: raised at the merge (a kill, a
    full disk) instead of merging. Returns the exit status."""
    from mtd_cache.cli.cache import cli
    from mtd_cache.store import writer

    args = ["dump", "--task", "digits", "--teachers-dir", str(tiny["teachers"]), "--out", str(out), "--test-subset",
            "20", *map(str, extra)]
    with pytest.MonkeyPatch.context() as mp:
        if stop is not None:
            mp.setattr(writer.StoreWriter, "finish", lambda self: (_ for _ in ()).throw(stop))
        with pytest.raises(SystemExit) as done:
            run_command(cli, args, prog="mtd-cache")
    return done.value.code


def _leftover(tiny: dict, out: Path, *extra) -> Path:
    """The pieces a dump of ``extra`` leaves when it is stopped at its merge, moved beside ``out``."""
    other = out.with_name("other.h5")
    assert _dump(tiny, other, *extra, stop=KeyboardInterrupt()) == 130
    pieces = out.with_name(out.name + ".partial")
    other.with_name("other.h5.partial").rename(pieces)
    return pieces


def test_the_leftover_of_the_dump_that_wrote_a_store_is_removed_and_force_then_dumps(tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "s.h5"
    assert _dump(tiny, out, "--train-subset", "40") == 0
    pieces = _leftover(tiny, out, "--train-subset", "40")  # a dump killed after its rename, before its clean-up
    assert _dump(tiny, out, "--train-subset", "40") == 0  # the same dump: nothing to do, and the leftover goes
    assert f"removing {pieces}: the pieces of {out}, which is complete" in caplog.text and not pieces.exists()
    pieces = _leftover(tiny, out, "--train-subset", "40")
    caplog.clear()
    assert _dump(tiny, out, "--train-subset", "30", "--force") == 0  # the case: was exit 2, store deleted
    assert f"removing {pieces}" in caplog.text and not pieces.exists()
    assert _dump(tiny, tmp_path / "ref.h5", "--train-subset", "30") == 0
    assert diff_stores(out, tmp_path / "ref.h5") == []


def test_a_force_dump_that_cannot_finish_leaves_the_good_store_byte_for_byte(tiny, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert _dump(tiny, out, "--train-subset", "40") == 0
    good = out.read_bytes()
    pieces = _leftover(tiny, out, "--train-subset", "20")  # another dump's unfinished pieces: not this store's
    capsys.readouterr()
    assert _dump(tiny, out, "--train-subset", "30", "--force") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mtd-cache: error: {pieces} holds an unfinished dump with other settings (extra, fingerprint, "
        "num_examples); remove it or dump with the same settings")
    assert out.read_bytes() == good and pieces.is_dir()
    shutil.rmtree(pieces)
    assert _dump(tiny, out, "--train-subset", "30", "--force", stop=KeyboardInterrupt()) == 130
    assert out.read_bytes() == good  # replaced only by a complete store
    assert _dump(tiny, out, "--train-subset", "30", "--force") == 0  # which the next run finishes
    assert out.read_bytes() != good


def test_a_dump_stopped_by_a_full_disk_at_the_merge_resumes_once_its_merge_fits(tiny, tmp_path):
    with mounted(tmp_path / "disk", "-o", "size=2m") as disk:
        out = disk / "s.h5"
        full = OSError(errno.ENOSPC, "No space left on device")
        assert _dump(tiny, out, "--train-subset", "400", stop=full) == 3  # every piece written, then the disk filled
        pieces = sum(p.stat().st_size for p in (disk / "s.h5.partial").glob("*.npz"))
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - int(pieces * 1.5)))  # room for the merge, not for 2x the store
        assert _dump(tiny, out, "--train-subset", "400") == 0  # was exit 3: "... and its pieces as much again"
        assert _dump(tiny, tmp_path / "ref.h5", "--train-subset", "400") == 0
        assert diff_stores(out, tmp_path / "ref.h5") == []


def test_a_dump_finding_its_store_unsealed_seals_it(tiny, tmp_path, caplog):
    import h5py

    from mtd_cache.store import TeacherStore

    caplog.set_level(logging.INFO)
    out = tmp_path / "s.h5"
    assert _dump(tiny, out, "--train-subset", "40") == 0
    with h5py.File(out, "r+") as f:  # as a dump of an earlier mtd-cache wrote it
        del f.attrs["seal_json"], f.attrs["seal_sha256"]
    assert not TeacherStore.open(out).sealed
    assert _dump(tiny, out, "--train-subset", "40") == 0
    assert f"{out} has no seal: verifying its checksums and sealing it" in caplog.text
    assert TeacherStore.open(out).sealed


def test_a_store_is_reused_only_when_it_holds_this_dump(sst2_teachers, caplog):
    root, data, _, _ = sst2_teachers
    out = root / "s.h5"
    run_dump("sst-2", root / "t", out, [], {"max_length": 32})
    stamp = out.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        run_dump("sst-2", root / "t", out, [], {"max_length": 32})
    assert out.stat().st_mtime_ns == stamp and "holds this dump already" in caplog.text
    with pytest.raises(MtdError, match=r"s.h5 was dumped otherwise \(.*max_length.*32 there, 24 asked.*\): give "
                                       r"another --out, or --force to dump again"):
        run_dump("sst-2", root / "t", out, [], {"max_length": 24})
    run_dump("sst-2", root / "t", out, [], {"max_length": 24}, force=True)
    assert TeacherStore.open(out).max_length == 24
    shutil.copytree(root / "t", root / "moved")  # the same teachers found elsewhere: the same dump
    stamp = out.stat().st_mtime_ns
    run_dump("sst-2", root / "moved", out, [], {"max_length": 24})
    assert out.stat().st_mtime_ns == stamp
