"""Sparse multi-teacher targets (``core.sparse``) against the dense computation they stand for.

The dense logits are rounded to float16 first, so "exact" means what the issue asks: equal to the dense
computation on the stored values, within float32 arithmetic.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtd_cache.core.sparse import bucket_kd, sparse_batch, subset_target, teacher_log_buckets

B, V, N, K = 6, 500, 4, 8
TEMPS = (1.0, 2.0)


@pytest.fixture(scope="module")
def pool():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(B, 1, V, generator=g) * 3  # the teachers agree in part: their top-k sets overlap
    dense = (shared + torch.randn(B, N, V, generator=g) * 1.5).half().double()
    student = torch.randn(B, V, generator=g, dtype=torch.float64)
    return dense, student, sparse_batch(dense, K, TEMPS)


def _bucketed(p: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense distributions (B, V) as each token's buckets: on U (B, u; 0 on padding) and the rest (B,)."""
    member = batch.members(p.shape[-1])
    on_u = torch.gather(p, 1, batch.ids) * batch.mask
    return on_u, p.masked_fill(member, 0).sum(-1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row: sum p log(p / q) over the entries with p > 0."""
    return torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)


def _bucket_kl(p, q, batch) -> torch.Tensor:
    (pu, pt), (qu, qt) = _bucketed(p, batch), _bucketed(q, batch)
    return _kl(torch.cat([pu, pt[:, None]], -1), torch.cat([qu, qt[:, None]], -1))


@pytest.mark.parametrize("t", TEMPS)
def test_every_subset_s_probabilities_and_losses_are_exact_and_logits_within_their_bound(pool, t):
    dense, student, batch = pool
    assert (K <= batch.width).all() and (batch.width <= N * K).all()
    ids_ok = [batch.ids[i, batch.mask[i]] for i in range(B)]
    assert all(bool((row[1:] > row[:-1]).all()) for row in ids_ok)  # ascending, distinct
    q = torch.softmax(student / t, -1)
    for size in range(1, N + 1):
        for subset in itertools.combinations(range(N), size):
            p_t = torch.softmax(dense[:, list(subset)] / t, -1)  # (B, s, V) float64
            mix = p_t.mean(1)
            got = subset_target(batch, subset, "mean_probs", t)
            want_u, want_tail = _bucketed(mix, batch)
            torch.testing.assert_close(got.log_p.exp().double(), want_u, rtol=2e-6, atol=1e-9)
            torch.testing.assert_close(got.log_tail.exp().double(), want_tail, rtol=2e-5, atol=1e-12)
            # the |U| + 1-bucket KL: exact for the buckets, a lower bound of the dense KL
            kl = float(bucket_kd(student, batch, got, t, "kl")) / t**2
            assert kl == pytest.approx(float(_bucket_kl(mix, q, batch).mean()), rel=1e-4, abs=1e-7)
            assert kl <= float(_kl(mix, q).mean()) + 1e-6
            # mean_losses: each teacher's own buckets, weighed
            losses = float(bucket_kd(student, batch, subset_target(batch, subset, "mean_losses", t), t, "kl")) / t**2
            each = sum(_bucket_kl(p_t[:, i], q, batch) for i in range(size)) / size
            assert losses == pytest.approx(float(each.mean()), rel=1e-4)
            # mean_logits: exact logits on U; the tail bucket is Hölder's bound, so on U the target is at most
            # the dense one and at least it times (1 - the bound's mass)
            ml = subset_target(batch, subset, "mean_logits", t)
            dense_ml = torch.softmax(dense[:, list(subset)].mean(1) / t, -1)
            on_u, true_tail = _bucketed(dense_ml, batch)
            sparse_p, bound = ml.log_p.exp().double(), ml.bound.exp().double()
            assert (sparse_p <= on_u * (1 + 1e-5) + 1e-12).all()
            assert (on_u * (1 - bound[:, None]) <= sparse_p * (1 + 1e-5) + 1e-12).all()
            assert ((0 <= true_tail) & (true_tail <= bound * (1 + 1e-5))).all()


def test_the_tail_log_mass_where_top_k_holds_nearly_everything():
    """Top-k holding 1 - 1e-9 of the mass: 1 - kept rounds to 0 in float32 (log(1 - kept) = -inf); the complement's
    log-sum-exp gives the tail's log-mass to float32 precision, as a float64 dense computation does."""
    z = torch.full((1, 1, 200), -30.0, dtype=torch.float64)
    z[0, 0, :4] = torch.tensor([2.0, 1.0, 0.5, 0.0])
    z[0, 0, 4:] += torch.linspace(-1, 1, 196, dtype=torch.float64)
    batch = sparse_batch(z, 4, (1.0,), dtype=torch.float32)
    _, log_tail = teacher_log_buckets(batch, 1.0)
    exact = float(torch.logsumexp(z[0, 0, 4:], -1) - torch.logsumexp(z[0, 0], -1))  # float64 dense
    assert exact < math.log(1e-9)
    assert float(log_tail[0, 0]) == pytest.approx(exact, rel=1e-6)
    kept = torch.softmax(z.float(), -1)[0, 0, :4].sum()
    naive = float(torch.log1p(-kept))
    assert naive == float("-inf") or abs(naive - exact) > 1.0  # the cancellation a kept-mass tail falls into


def test_a_support_that_covers_the_vocabulary_has_an_empty_tail():
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    batch = sparse_batch(dense, 8, (1.0, 4.0), dtype=torch.float32)
    assert batch.ids.tolist() == [list(range(8))] * 2 and batch.mask.all()
    assert torch.isneginf(batch.tails).all()  # encoded as -inf: no mass, not an invented bucket
    student = torch.randn(2, 8, generator=g, dtype=torch.float64)
    for rule in ("mean_probs", "mean_logits"):
        target = subset_target(batch, (0, 2), rule, 4.0)
        assert torch.isneginf(target.log_tail).all() and torch.isneginf(target.bound).all()
    p = torch.softmax(dense[:, [0, 2]].mean(1) / 4.0, -1)
    q = torch.softmax(student / 4.0, -1)
    got = float(bucket_kd(student, batch, subset_target(batch, (0, 2), "mean_logits", 4.0), 4.0, "kl"))
    assert got == pytest.approx(16 * float(_kl(p, q).mean()), rel=1e-5)  # exact: nothing outside U


def test_padding_and_the_student_s_gradient(pool):
    """Tokens of different widths share a batch; padding adds nothing, and the bucketed KL's gradient with respect
    to the student's logits is right (checked numerically in float64)."""
    dense, student, batch = pool
    assert len(set(batch.width.tolist())) > 1  # the widths differ: some rows are padded
    target = subset_target(batch, (0, 1, 3), "mean_probs", 2.0)
    alone = [bucket_kd(student[i:i + 1], one, subset_target(one, (0, 1, 3), "mean_probs", 2.0), 2.0)
             for i in range(B) for one in [sparse_batch(dense[i:i + 1], K, TEMPS)]]
    assert float(bucket_kd(student, batch, target, 2.0)) == pytest.approx(float(sum(alone) / B), rel=1e-6)
    z = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: bucket_kd(s, batch, target, 2.0, "kl"), (z,))


def test_a_temperature_outside_the_grid_is_refused(pool):
    _, _, batch = pool
    with pytest.raises(ValueError, match=r"temperature 3.0 is not in the cache's grid \[1.0, 2.0\]"):
        subset_target(batch, (0,), "mean_logits", 3.0)
    with pytest.raises(ValueError, match="unknown sparse rule 'median'"):
        subset_target(batch, (0,), "median")


# ----------------------------------------------------------------------------- the token store


def _teachers(v: int, n: int, seed: int = 0):
    """n tiny 'language models': logits of the next token from the current one (a bigram table each), sharing a
    part so that their top-k sets overlap, as seeds of one architecture do."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(v, v, generator=g, dtype=torch.float64) * 2
    tables = [shared + torch.randn(v, v, generator=g, dtype=torch.float64) for _ in range(n)]
    return [lambda ids, w=w: w[ids] for w in tables]


def test_a_token_store_round_trips_and_checks_its_targets_against_the_dense_ones(tmp_path):
    from mtd_cache.store.token_writer import write_token_store
    from mtd_cache.store.tokens import TokenStore

    teachers = _teachers(60, 3)
    seqs = [[1, 5, 9, 2, 7], [3], [4, 4, 8, 0, 59, 1, 2]]  # the one-token sequence predicts nothing
    dump = write_token_store(tmp_path / "t.h5", seqs, teachers, k=4, temperatures=(1.0, 2.0), dense_check=True)
    assert dump.positions == 4 + 6 and 4 <= dump.mean_width <= 12
    # float32 arithmetic on the stored values: the probabilities' largest error, and by how much a true tail ever
    # exceeds its stored bound (rounding alone)
    assert dump.dense_check["mean_probs"] < 1e-6 and dump.dense_check["mean_logits_outside_bound"] < 1e-6
    with TokenStore.open(dump.path) as store:
        assert (store.positions, store.num_teachers, store.k, store.vocab_size) == (10, 3, 4, 60)
        assert store.position_of(2, 1) == 4 and store.position_of(0, 4) == 3
        # sequence 2: (6, 3, 60), as the store takes a teacher's logits: float32 (what models give), then float64
        dense = torch.stack([t(torch.tensor(seqs[2]))[:-1] for t in teachers], dim=1).float().double()
        direct = sparse_batch(dense, 4, (1.0, 2.0))
        got = store.batch(range(4, 10))
        assert torch.equal(got.ids, direct.ids) and torch.equal(got.mask, direct.mask)
        on_u = got.logits.permute(0, 2, 1)[got.mask]  # padding holds anything
        assert torch.equal(on_u, direct.logits.permute(0, 2, 1)[direct.mask]) and torch.equal(got.tails, direct.tails)
        log_p = torch.log_softmax(dense, -1)
        gold = log_p.gather(2, torch.tensor(seqs[2][1:])[:, None, None].expand(-1, 3, 1))[..., 0]
        np.testing.assert_allclose(store.gold[4:], gold.numpy(), rtol=1e-6)
        np.testing.assert_allclose(store.entropy[4:], (-(log_p.exp() * log_p).sum(-1)).numpy(), rtol=1e-6)
        widths = np.diff(store.offsets)
        per_position = 4 * widths + 2 * 3 * widths + 4 * 3 * 2 + 4 * 3 + 4 * 3  # ids, logits, tails, gold, entropy
        assert store.bytes_per_token() == pytest.approx(per_position.mean() / 3)


def test_a_flipped_byte_or_a_damaged_offset_is_refused(tmp_path):
    import h5py

    from mtd_cache.core.errors import StoreError
    from mtd_cache.store.token_writer import write_token_store
    from mtd_cache.store.tokens import TokenStore

    path = write_token_store(tmp_path / "t.h5", [[1, 2, 3, 4]], _teachers(30, 2), k=3).path
    with h5py.File(path, "r+") as f:
        values = f["support/logits"][...]
        values.view(np.uint8)[5] ^= 0x10
        f["support/logits"][...] = values
    with pytest.raises(StoreError, match="the dataset support/logits does not match its checksum"):
        TokenStore.open(path)
    with pytest.raises(StoreError, match="^no token store at .*none.h5$"):
        TokenStore.open(tmp_path / "none.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "mtd-cache"
    with pytest.raises(StoreError, match="other.h5 is not a token store of format mtd-cache-tokens v1"):
        TokenStore.open(tmp_path / "other.h5")


def test_a_vocabulary_inside_the_support_stores_empty_tails(tmp_path):
    from mtd_cache.store.token_writer import write_token_store
    from mtd_cache.store.tokens import TokenStore

    dump = write_token_store(tmp_path / "t.h5", [[0, 1, 2, 3, 4, 5, 6, 7]], _teachers(8, 2), k=8)
    with TokenStore.open(dump.path) as store:
        assert np.isneginf(store.tails).all() and (np.diff(store.offsets) == 8).all()
