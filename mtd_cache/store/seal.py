"""The seal: one checksum over everything that defines a store, checked at every open.

Each dataset carries the sha256 of its bytes (``integrity.py``). The seal covers the rest, so that no
edited attribute and no stripped checksum goes unnoticed: every root attribute that defines the store
(all of them but the dump's costs, ``COST_ATTRS``, which are measurements, not definitions), every
group's attributes (a primary's layers and heads), and each dataset's name, dtype, shape and checksum.
It is two root attributes (an addition within format version 1): ``seal_json``, the canonical JSON of
``{"attrs": {name: sha256 of the value}, "groups": {group: {name: sha256}}, "datasets": {name:
{"dtype", "shape", "sha256"}}}``, and ``seal_sha256``, the sha256 of that text. Reading the seal costs
a walk over the file's few dozen objects (about a millisecond): every open checks it, and a difference
is named (``attribute 'metric' was changed``). The bytes of the datasets are checked against their
checksums once per file version (``reader.py``, ``verified.py``).

What it guards against: damage, and edits by tools that do not know the format (``h5py``, HDFView).
Whoever rewrites a store and recomputes every checksum and the seal makes a new store: like any file,
a store is as trustworthy as where it came from (its fingerprint still binds it to its inputs, which
students rebuild and compare).

``seal_store`` (``mtd-cache inspect --seal``) seals a store written before seals existed: it verifies
every checksum the file has, hashes the datasets that have none, and writes the sealed copy beside the
store, renaming it into place; the file is never edited in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h5py

from ..core.errors import ResourceError, StoreError
from ..core.hashing import canonical_json, sha256_text
from ..core.progress import human_bytes
from ..core.safe_files import check_target, fsync_dir
from .format import ATTR_SEAL, ATTR_SEAL_JSON, COST_ATTRS
from .integrity import CHECKSUM, datasets, hash_dataset
from .states import _py

log = logging.getLogger(__name__)

NOT_SEALED = frozenset(COST_ATTRS) | {ATTR_SEAL, ATTR_SEAL_JSON}  # root attributes the seal leaves out


def describe(f: h5py.File) -> dict[str, Any]:
    """What the seal hashes, read from the open file."""
    groups: dict[str, dict[str, str]] = {}
    f.visititems(lambda name, obj: groups.__setitem__(name, _digests(obj.attrs, ()))
                 if isinstance(obj, h5py.Group) and len(obj.attrs) else None)
    return {"attrs": _digests(f.attrs, NOT_SEALED), "groups": groups,
            "datasets": {name: {"dtype": f[name].dtype.str, "shape": list(f[name].shape),
                                "sha256": _checksum(f[name])} for name in datasets(f)}}


def _digests(attrs: Any, leave_out: Any) -> dict[str, str]:
    return {k: sha256_text(json.dumps(_py(v), sort_keys=True)) for k, v in attrs.items() if k not in leave_out}


def _checksum(ds: h5py.Dataset) -> str | None:
    value = ds.attrs.get(CHECKSUM)
    return None if value is None else _py(value)


def write_seal(f: h5py.File) -> str:
    """Seal the open file (every dataset has its checksum already); returns ``seal_sha256``."""
    d = describe(f)
    missing = [n for n, v in d["datasets"].items() if v["sha256"] is None]
    if missing:
        raise StoreError(f"{f.filename}: the dataset {missing[0]} has no checksum to seal")
    text = canonical_json(d)
    f.attrs[ATTR_SEAL_JSON] = text
    f.attrs[ATTR_SEAL] = sha256_text(text)
    return sha256_text(text)


def check_seal(path: Path, f: h5py.File) -> str | None:
    """The store's ``seal_sha256`` when its seal holds, None for a store without one; a ``StoreError`` naming
    what changed since it was sealed otherwise."""
    problems, seal = seal_problems(f)
    if problems:
        raise StoreError(f"{path} was changed since it was written ({'; '.join(problems[:4])}"
                         f"{'; ...' if len(problems) > 4 else ''}): the file was edited or damaged; dump it again")
    return seal


def seal_problems(f: h5py.File) -> tuple[list[str], str | None]:
    """(every difference between the file and its seal, named; the seal's sha256), or ([], None) unsealed."""
    text, digest = f.attrs.get(ATTR_SEAL_JSON), f.attrs.get(ATTR_SEAL)
    if text is None and digest is None:
        return [], None
    text, digest = _py(text), _py(digest)
    if text is None or digest is None or sha256_text(str(text)) != digest:
        return ["its seal (seal_json, seal_sha256) is damaged or incomplete"], None
    try:
        want = json.loads(text)
        want = {k: dict(want[k]) for k in ("attrs", "groups", "datasets")}
    except (ValueError, KeyError, TypeError):
        return ["its seal_json is not a seal"], None
    have = describe(f)
    out = _compare("attribute", want["attrs"], have["attrs"])
    for group in sorted(set(want["groups"]) | set(have["groups"])):
        out += _compare(f"attribute of {group}:", want["groups"].get(group, {}), have["groups"].get(group, {}))
    for name in sorted(set(want["datasets"]) | set(have["datasets"])):
        w, h = want["datasets"].get(name), have["datasets"].get(name)
        if w is None or h is None:
            out.append(f"dataset {name} was {'added' if w is None else 'removed'}")
        elif (w.get("dtype"), w.get("shape")) != (h["dtype"], h["shape"]):
            out.append(f"dataset {name} is {h['dtype']} {tuple(h['shape'])}, sealed as {w.get('dtype')} "
                       f"{tuple(w.get('shape') or ())}")
        elif w.get("sha256") != h["sha256"]:
            out.append(f"the checksum of dataset {name} was {'removed' if h['sha256'] is None else 'changed'}")
    return out, digest


def _compare(what: str, want: dict[str, str], have: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            out.append(f"{what} {name!r} was removed")
        elif name not in want:
            out.append(f"{what} {name!r} was added")
        elif want[name] != have[name]:
            out.append(f"{what} {name!r} was changed")
    return out


def unsealed(path: Path) -> StoreError:
    """The one line that refuses a store without a seal for training."""
    return StoreError(f"{path} has no seal (written before mtd-cache recorded checksums, or they were removed), so "
                      f"what would train on it cannot be verified: check and seal it with `mtd-cache inspect --seal "
                      f"{path}`, or train on it unverified with --allow-unverified (the run's record says so)")


def seal_store(path: str | os.PathLike) -> dict[str, Any]:
    """Verify what the store records and seal it: ``{"sealed": bool (False: it was sealed already), "hashed":
    [datasets given a checksum now], "verified": [datasets whose recorded checksum was checked]}``.

    The caller has opened the store (``TeacherStore.open``: format, shapes, finite logits) and holds its
    ``output_lock``. A recorded checksum that does not match is refused, never re-recorded.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        sealed = check_seal(path, f) is not None
        names = datasets(f)
        recorded = [n for n in names if CHECKSUM in f[n].attrs]
        for name in recorded:
            if hash_dataset(f[name]) != _checksum(f[name]):
                raise StoreError(f"{path}: the dataset {name} does not match its checksum: the file was changed or "
                                 "damaged since it was written, and is not sealed (dump it again)")
    if sealed:
        return {"sealed": False, "hashed": [], "verified": recorded}
    check_target(path, "store")
    free = shutil.disk_usage(path.parent).free
    if path.stat().st_size + (1 << 20) > free:
        raise ResourceError(f"sealing {path} writes a sealed copy beside it ({human_bytes(path.stat().st_size)}); "
                            f"{path.parent} has {human_bytes(free)} free")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".seal", dir=path.parent)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            hashed = [n for n in names if n not in recorded]
            for name in hashed:
                f[name].attrs[CHECKSUM] = hash_dataset(f[name])
            write_seal(f)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        check_target(path, "store")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("sealed %s: %d datasets verified against their checksums, %d hashed now", path, len(recorded),
             len(hashed))
    return {"sealed": True, "hashed": hashed, "verified": recorded}
