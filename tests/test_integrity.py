"""What trains is verified: every dataset and defining attribute a student reads is checked before training.

An image store (digits) and a text store with a primary's states (a task file, tiny BERTs), each copied,
damaged one way (a flipped byte in a dataset, an edited attribute, checksums stripped), then given to
``mtd-train``: refused in one line naming what is damaged, before anything is written. A store without a
seal trains only with ``--allow-unverified`` (recorded) or after ``mtd-cache inspect --seal``; the
verified-markers that spare a sweep's processes from hashing again never let a changed store pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_runner import run_cli
from factories import cli, one_line_error

from mtd_cache.cli.common import run_command
from mtd_cache.core.errors import StoreError
from mtd_cache.store import TeacherStore

IMAGE_DATASETS = ["logits", "examples/label", "examples/source", "views", "teachers/dev_metric", "dev/logits",
                  "dev/label"]
TEXT_DATASETS = ["logits", "examples/label", "examples/source", "teachers/dev_metric", "dev/logits", "dev/label",
                 "primary/0/lengths", "primary/0/hidden_offsets", "primary/0/hidden", "primary/0/attn_offsets",
                 "primary/0/attn"]


@pytest.fixture
def stores(tiny) -> dict:
    return tiny


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(Path(src).read_bytes())
    return dst


def _train(stores: dict, kind: str, store: Path, out: Path, capsys, *extra) -> tuple[int, list[str]]:
    student = ["--student", "resnet8", "--teachers", "0,1"] if kind == "image" else \
        ["--student", f"hf:{stores['student']}", "--teachers", "0,1", "--primary", "0", "--set", "alpha_hidden=1",
         "--set", "batch_size=8"]
    from mtd_cache.cli.student import cli

    with pytest.raises(SystemExit) as done:
        run_command(cli, [str(a) for a in ["--store", store, *student, "--epochs", "1", "--device", "cpu", "--out",
                                           out, *extra]], prog="mtd-train")
    return done.value.code, capsys.readouterr().err.strip().splitlines()


def _flip(path: Path, name: str) -> None:
    """Flip the lowest bit of the dataset's first byte, behind HDF5's back (as a bad disk would)."""
    with h5py.File(path, "r") as f:
        offset = f[name].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def _records(out: Path) -> list[Path]:
    return list(out.rglob("*.json")) + list(out.rglob("*.safetensors")) if out.exists() else []


# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("kind, name", [("image", n) for n in IMAGE_DATASETS] + [("text", n) for n in TEXT_DATASETS],
                         ids=lambda v: v.replace("/", "-"))
def test_a_flipped_byte_in_any_dataset_is_refused_before_training(stores, tmp_path, capsys, kind, name):
    path = _copy(stores[kind], tmp_path / "s.h5")
    _flip(path, name)
    code, err = _train(stores, kind, path, tmp_path / "runs", capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{path}: the dataset {name} does not match its checksum" in err[0]
    assert _records(tmp_path / "runs") == []  # nothing trained, nothing recorded


@pytest.mark.parametrize("name, value, message", [
    ("lengths", 200, r"primary/0/lengths holds 200 at example 3, not a token count \(1..32\)"),
    ("lengths", 7, "primary/0/hidden_offsets holds .* at entry 4, where primary/0/lengths puts"),
    ("hidden_offsets", 2**40, r"primary/0/hidden_offsets holds 1099511627776 at entry 3, where primary/0/lengths"),
    ("attn_offsets", -5, "primary/0/attn_offsets holds -5 at entry 3, where primary/0/lengths"),
], ids=["length-too-long", "length-changed", "offset-huge", "offset-negative"])
def test_damaged_lengths_and_offsets_are_named_in_an_unverified_store_too(stores, tmp_path, capsys, name, value,
                                                                          message):
    path = _copy(stores["text"], tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        _strip(f)
        f[f"primary/0/{name}"][3] = value
    code, err = _train(stores, "text", path, tmp_path / "runs", capsys, "--allow-unverified")
    assert code == 2 and len(err) == 1 and "Traceback" not in "".join(err), err
    assert re.search(message, err[0]), err
    assert _records(tmp_path / "runs") == []


# ----------------------------------------------------------------------------- attributes


EDITS = [
    ("metric", "bogus"), ("label_names", np.array(["x", "y", "z"], dtype=h5py.string_dtype())),
    ("teacher_seeds", np.array([5, 6])), ("precision", "bf16"), ("task", "mrpc"), ("fingerprint", "0" * 64),
    ("teacher_paths", np.array(["/a", "/b"], dtype=h5py.string_dtype())), ("teacher_model", "other"),
    ("teachers_sha256", np.array(["a" * 64, "b" * 64], dtype=h5py.string_dtype())), ("package_version", "9.9"),
    ("num_labels", 4), ("spec_json", "{not json"), ("added_later", 1),
]


@pytest.mark.parametrize("kind", ["image", "text"])
@pytest.mark.parametrize("attr, value", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_attribute_is_named_by_train_and_inspect(stores, tmp_path, capsys, kind, attr, value):
    path = _copy(stores[kind], tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        if attr == "num_labels" and kind == "text":
            value = 2
        f.attrs[attr] = value
    code, err = _train(stores, kind, path, tmp_path / "runs", capsys)
    verb = "added" if attr == "added_later" else "changed"
    assert code == 2 and len(err) == 1, err
    assert f"{path} was changed since it was written (attribute {attr!r} was {verb}" in err[0], err
    r = run_cli("mtd-cache", "inspect", path, "--verify")
    assert r.returncode == 2 and f"attribute {attr!r} was {verb}" in r.stderr, r.stderr
    assert _records(tmp_path / "runs") == []


def test_edited_attributes_of_a_primary_and_the_spec_are_named(stores, tmp_path):
    path = _copy(stores["text"], tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f["primary/0"].attrs["hidden_layers"] = np.array([0, 1])
        spec = json.loads(f.attrs["spec_json"])
        f.attrs["spec_json"] = json.dumps({**spec, "metric": "mcc"}, sort_keys=True)
        del f["dev/label"].attrs["sha256"]
    with pytest.raises(Exception, match=r"attribute 'spec_json' was changed; attribute of primary/0: 'hidden_layers' "
                                        r"was changed; the checksum of dataset dev/label was removed"):
        TeacherStore.open(path)


def test_what_the_seal_leaves_out_is_the_dumps_cost(stores, tmp_path):
    path = _copy(stores["image"], tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["dump_wall_s"] = 1.5  # re-measured costs are not what the store is
        f.attrs["created_utc"] = "2000-01-01T00:00:00+00:00"
    assert TeacherStore.open(path).dump_wall_s == 1.5


# ----------------------------------------------------------------------------- stores without a seal


def _strip(f: h5py.File) -> None:
    """As a store written before checksums existed (or one whose checksums were removed)."""
    f.visititems(lambda name, obj: obj.attrs.__delitem__("sha256") if "sha256" in obj.attrs else None)
    for name in ("seal_json", "seal_sha256"):
        del f.attrs[name]


def test_stripped_checksums_are_refused_then_trained_unverified_or_sealed(stores, tmp_path, capsys):
    path = _copy(stores["image"], tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        _strip(f)
        f["logits"][0, 0, 0, 0] += 1.0  # altered after the checksums were removed: nothing can tell
    code, err = _train(stores, "image", path, tmp_path / "a", capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{path} has no seal (written before mtd-cache recorded checksums, or they were removed)" in err[0]
    assert f"`mtd-cache inspect --seal {path}`" in err[0] and "--allow-unverified" in err[0]
    assert _records(tmp_path / "a") == []
    code, _ = _train(stores, "image", path, tmp_path / "a", capsys, "--allow-unverified")
    assert code == 0
    unverified = json.loads(next((tmp_path / "a").rglob("*.json")).read_text())
    assert unverified["store_integrity"] == "unverified (--allow-unverified)"
    before = path.stat().st_ino
    r = run_cli("mtd-cache", "inspect", path, "--seal")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"sealed {path}: 0 datasets matched their checksums, 7 hashed now")
    assert path.stat().st_ino != before  # a new file renamed into place, never edited in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.h5.")]
    code, _ = _train(stores, "image", path, tmp_path / "b", capsys)
    assert code == 0
    sealed = json.loads(next((tmp_path / "b").rglob("*.json")).read_text())
    assert sealed["store_integrity"] == "verified"
    assert sealed["run_id"] == unverified["run_id"]  # neither the flag nor the seal is in the run id
    again = run_cli("mtd-cache", "inspect", path, "--seal")
    assert again.returncode == 0 and f"{path} is sealed already: 7 datasets match their checksums" in again.stdout


def test_seal_refuses_a_store_whose_recorded_checksum_does_not_match(stores, tmp_path):
    path = _copy(stores["text"], tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        for name in ("seal_json", "seal_sha256"):
            del f.attrs[name]
    _flip(path, "primary/0/hidden")
    before = path.read_bytes()
    r = run_cli("mtd-cache", "inspect", path, "--seal")
    assert r.returncode == 2 and "the dataset primary/0/hidden does not match its checksum" in r.stderr, r.stderr
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------- verified-markers

CHILD = """
import sys
from mtd_cache.store import reader, states, validate
if sys.argv[2] == "no-hashing":  # this process must find the verification done by another
    def refuse(*a, **k):
        raise SystemExit("hashed again")
    validate.scan = validate.check_small = states.PrimaryStates.verify = refuse
s = reader.TeacherStore.open(sys.argv[1])
s.primary(0)
print("ok")
"""


def _child(path: Path, mode: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True, env=env)


def test_a_marker_spares_later_processes_and_never_passes_a_changed_store(stores, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MTD_VERIFIED_DIR": str(tmp_path / "markers")}
    path = _copy(stores["text"], tmp_path / "s.h5")
    assert _child(path, "no-hashing", env).stderr.strip().endswith("hashed again")  # nothing verified it yet
    assert _child(path, "verify", env).stdout.strip() == "ok"  # the first process verifies and leaves markers
    assert sorted(p.stat().st_mode & 0o777 for p in [tmp_path / "markers"]) == [0o700]
    assert _child(path, "no-hashing", env).stdout.strip() == "ok"  # a later one trusts them
    st = path.stat()
    _flip(path, "primary/0/hidden")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and modification time: its change time moved
    r = _child(path, "verify", env)
    assert r.returncode == 1 and "the dataset primary/0/hidden does not match its checksum" in r.stderr


def test_markers_in_a_folder_others_can_write_are_never_trusted(stores, tmp_path):
    markers = tmp_path / "markers"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MTD_VERIFIED_DIR": str(markers)}
    path = _copy(stores["image"], tmp_path / "s.h5")
    assert _child(path, "verify", env).returncode == 1  # an image store has no primary 0: a StoreError at the end
    assert list(markers.glob("*.json"))  # the base part was verified and marked before primary(0) failed
    markers.chmod(0o777)  # e.g. MTD_VERIFIED_DIR pointed at a shared folder: anyone could forge a marker there
    r = _child(path, "no-hashing", env)
    assert r.stderr.strip().endswith("hashed again")
    markers.chmod(0o700)
    for marker in markers.glob("*.json"):  # a marker that is a link is not one
        target = marker.with_suffix(".real")
        marker.rename(target)
        marker.symlink_to(target)
    assert _child(path, "no-hashing", env).stderr.strip().endswith("hashed again")


def _rehashed(f: h5py.File, name: str, where, value) -> None:
    """An edit with the dataset's checksum recomputed: what only the checks of the values can catch."""
    from mtd_cache.store.integrity import hash_dataset

    f[name][where] = value
    f[name].attrs["sha256"] = hash_dataset(f[name])


def _unseal(f: h5py.File) -> None:
    for name in ("seal_json", "seal_sha256"):
        del f.attrs[name]


@pytest.mark.slow
def test_a_flipped_byte_in_the_logits_is_caught_on_open(digits_teacher_pairs, tmp_path):
    path = _copy(digits_teacher_pairs / "clean.h5", tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        offset = f["logits"].id.get_offset()
        value = float(f["logits"][3, 2, 1, 4])
    with open(path, "r+b") as fh:  # the lowest mantissa byte of logits[0, 0, 0, 0]: still finite
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))
    with h5py.File(path, "r") as f:
        assert np.isfinite(f["logits"][0, 0, 0, 0]) and float(f["logits"][3, 2, 1, 4]) == value
    with pytest.raises(StoreError, match=r"the dataset logits does not match its checksum \(sha256 .*the file was "
                                         r"changed or damaged"):
        TeacherStore.open(path)
    r = cli("inspect", path, "--verify")
    assert r.returncode == 2 and "logits does not match its checksum" in one_line_error(r)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("num_labels", 7), r"the num_labels attribute \(7\) disagrees with the spec the "
                                                     "dump recorded"),
    (lambda f: _rehashed(f, "dev/logits", (4, 1, 3), np.nan), r"dev/logits: teacher 1 has a non-finite value \(nan\) "
                                                              r"at example 4"),
    (lambda f: _rehashed(f, "examples/label", 5, 42), "examples/label holds 42 at example 5, outside the classes 0..9"),
    (lambda f: f.attrs.__delitem__("fingerprint"), "lacks the attribute 'fingerprint': not a complete"),
    (lambda f: f.__delitem__("logits"), "lacks the dataset 'logits': not a complete"),
    (lambda f: f["views"].__setitem__((0, 0), 2), "the dataset views does not match its checksum"),
], ids=["num_labels", "dev-nan", "label-42", "no-fingerprint", "no-logits", "views-edited"])
def test_edited_stores_are_refused_in_one_line(digits_teacher_pairs, tmp_path, edit, message):
    path = _copy(digits_teacher_pairs / "clean.h5", tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        edit(f)
        _unseal(f)  # the checks behind the seal (which names any edit first: tests/test_integrity.py)
    with pytest.raises(StoreError, match=message):
        TeacherStore.open(path)
    r = cli("inspect", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_stores_without_checksums_still_open_and_say_so(digits_teacher_pairs, tmp_path):
    path = _copy(digits_teacher_pairs / "clean.h5", tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:  # as written before checksums existed
        f.visititems(lambda name, obj: obj.attrs.__delitem__("sha256") if "sha256" in obj.attrs else None)
        _unseal(f)
    TeacherStore.open(path).close()
    r = cli("inspect", path, "--verify")
    assert r.returncode == 0 and "no checksums recorded" in r.stdout
    assert "7 datasets verified: all match" in cli("inspect", digits_teacher_pairs / "clean.h5", "--verify").stdout


def test_primary_states_are_verified_when_the_dump_finishes_and_by_inspect(tmp_path, monkeypatch):
    from mtd_cache.store import PrimarySpec, StoreSpec, StoreWriter, writer

    ps = PrimarySpec(hidden_size=4, hidden_layers=(0, 1), attn_layers=(1,), num_heads=2)
    spec = StoreSpec(task="mrpc", metric="accuracy", label_names=("0", "1"), num_examples=3, num_teachers=1,
                     fingerprint="f" * 64, primaries={0: ps})

    def write(out: Path) -> Path:
        w = StoreWriter.open(out, spec)
        lengths = np.array([2, 3, 1])
        w.put_logits(0, 0, np.zeros((3, 2), np.float32))
        w.put_primary(0, 0, lengths, np.ones((12, 4), np.float16), np.ones((28,), np.float16))
        w.put("examples/label", np.array([0, 1, 0]))
        return w.finish()

    path = write(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f["primary/0/hidden"][5, 2] = 7.0
    r = cli("inspect", path, "--verify")
    assert r.returncode == 2 and "the dataset primary/0/hidden does not match its checksum" in one_line_error(r)
    real = writer.verify_file
    monkeypatch.setattr(writer, "verify_file", lambda p, names: {**real(p, names), "bad": ["primary/0/attn"]})
    with pytest.raises(StoreError, match=r"primary/0/attn read back from .*merge.tmp does not match what was written"):
        write(tmp_path / "t.h5")
    assert not (tmp_path / "t.h5").exists() and not (tmp_path / "t.h5.partial" / "merge.tmp").exists()
