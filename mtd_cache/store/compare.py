"""Compare two stores dataset by dataset (resume and reproducibility checks)."""

from __future__ import annotations

import os

import h5py
import numpy as np

from .format import ATTR_SEAL, ATTR_SEAL_JSON, COST_ATTRS


def diff_stores(a: str | os.PathLike, b: str | os.PathLike) -> list[str]:
    """Every difference between two store files, timestamps, costs and seals aside; [] when equal."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        out = _diff_attrs("/", fa.attrs, fb.attrs)
        names_a, names_b = _walk(fa), _walk(fb)
        out += [f"only in {a}: {n}" for n in sorted(names_a - names_b)]
        out += [f"only in {b}: {n}" for n in sorted(names_b - names_a)]
        for name in sorted(names_a & names_b):
            oa, ob = fa[name], fb[name]
            out += _diff_attrs(name, oa.attrs, ob.attrs)
            if isinstance(oa, h5py.Dataset):
                if oa.shape != ob.shape or oa.dtype != ob.dtype:
                    out.append(f"{name}: {oa.shape} {oa.dtype} != {ob.shape} {ob.dtype}")
                elif not np.array_equal(oa[...], ob[...], equal_nan=oa.dtype.kind == "f"):
                    out.append(f"{name}: values differ")
    return out


def _walk(f: h5py.File) -> set[str]:
    names: set[str] = set()
    f.visit(names.add)
    return names


def _diff_attrs(where: str, a, b) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k in COST_ATTRS or k in (ATTR_SEAL, ATTR_SEAL_JSON):  # the seal is derived from what is compared
            continue
        va, vb = a.get(k), b.get(k)
        same = va is not None and vb is not None and np.array_equal(np.asarray(va), np.asarray(vb))
        if not same and not _both_nan(va, vb):
            out.append(f"{where} attribute {k}: {va!r} != {vb!r}")
    return out


def _both_nan(va, vb) -> bool:
    try:
        return bool(np.isnan(va) and np.isnan(vb))
    except TypeError:
        return False
