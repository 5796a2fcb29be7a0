"""A deterministic dump driven through StoreWriter, run as a subprocess that tests kill.

Usage: python store_child.py OUT.h5 — prints one line per finished shard, then
"merging" before ``finish()`` and "done" after. Data depend only on the example
and teacher indices, so any interrupted-and-resumed run must give the same store.
"""

import sys

import numpy as np

from mtd_cache.store import Fingerprint, PrimarySpec, StoreSpec, StoreWriter

N, T, C, CHUNK = 600, 3, 4, 50
LENGTHS = (np.arange(N) * 7919 % 29 + 3).astype(np.int32)


def spec() -> StoreSpec:
    return StoreSpec(task="toy", metric="accuracy", label_names=tuple("abcd"), num_examples=N, num_teachers=T,
                     fingerprint=Fingerprint().update("labels", np.arange(N) % C).hexdigest(), num_dev=10,
                     teacher_seeds=(0, 1, 2), primaries={1: PrimarySpec(16, (0, 2), (2,), 2)})


def logits(t: int, a: int, b: int) -> np.ndarray:
    return np.sin(np.arange(a * C, b * C).reshape(b - a, C) * (t + 1)).astype(np.float32)


def states(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = LENGTHS[a:b]
    rows = int(lengths.sum()) * 2
    hidden = (np.arange(rows * 16).reshape(rows, 16) % 251 + a).astype(np.float16)
    attn = (np.arange(int((lengths.astype(np.int64) ** 2).sum()) * 2) % 97 - a).astype(np.float16)
    return lengths, hidden, attn


def main(out: str) -> None:
    w = StoreWriter.open(out, spec())
    for t in range(T):
        for a in range(0, N, CHUNK):
            b = min(N, a + CHUNK)
            if not w.has_logits(t, a, b):
                w.put_logits(t, a, logits(t, a, b))
                print(f"logits {t} {a}", flush=True)
        if not w.has_dev(t):
            w.put_dev(t, logits(t, 0, 10), metric=0.5 + t / 10)
    for a in range(0, N, CHUNK):
        b = min(N, a + CHUNK)
        if not w.has_primary(1, a, b):
            w.put_primary(1, a, *states(a, b))
            print(f"primary {a}", flush=True)
    w.put("examples/label", np.arange(N) % C)
    w.put("dev/label", np.arange(10) % C)
    w.add_cost(0.1, None)
    print("merging", flush=True)
    w.finish()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
