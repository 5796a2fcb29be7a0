"""TinyBERT augmentation: candidates, masked-LM input, GloVe neighbours, rounds, resume, CLI.

A tiny randomly initialised BertForMaskedLM with a vocabulary written here, a tiny GloVe file and
small MRPC / SST-2 files, all under tmp_path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mtd_cache.augment import run as augment
from mtd_cache.augment.candidates import (
    STOPWORDS,
    MaskedLM,
    Sentence,
    Splitter,
    glove_neighbours,
    load_glove,
    load_mlm,
)
from mtd_cache.augment.run import AugmentConfig, augment_task, example_rows
from mtd_cache.cli.cache import cli
from mtd_cache.cli.common import run_command
from mtd_cache.core.errors import MtdError
from mtd_cache.tasks.augmented import read_augmented, sidecars
from mtd_cache.tasks.glue import read_split

SHARED_MRPC = Path(os.environ.get("MTD_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) \
    / "data" / "glue" / "MRPC" / "train.tsv"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "ran", "on", "mat", "big",
         "small", "red", "blue", "house", "fox", "quick", "brown", "mail", "e", "said", "he", "un", "##believ",
         "##able", "##s", "##ing", ".", ",", "!", "'", "-", '"', "3", "run"]
GLOVE = {"unbelievable": [1, 0, 0, 0], "incredible": [0.9, 0.1, 0, 0], "amazing": [0.8, 0.3, 0, 0],
         "astonishing": [0.7, 0, 0.5, 0], "table": [0, 0, 0, 1], "<unk>": [1, 1, 1, 1], "cats": [0, 1, 0, 0]}
MRPC = [("1", "The cat sat on the unbelievable mat.", 'He said "the dog ran."'),
        ("0", "A big red fox ran on the house.", "The quick brown dog sat."),
        ("1", "The small cats sat.", "A blue house, 3 mats!"),
        ("0", "He ran on the mat.", "The unbelievable fox sat on a big dog."),
        ("1", "The dog sat.", "The cat ran."),
        ("0", "A quick fox.", "The brown cat sat on the red mat.")]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny BertForMaskedLM (with its head) and the same encoder saved without the head."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    root = tmp_path_factory.mktemp("models")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(vocab=str(root / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(cfg)
    for name, model in (("mlm", mlm), ("headless", mlm.bert)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return {"mlm": root / "mlm", "headless": root / "headless"}


@pytest.fixture
def data(tmp_path) -> Path:
    """A GLUE root with a small MRPC train.tsv (BOM header, a quoted string) and SST-2."""
    mrpc = tmp_path / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    lines += [f"{y}\t{100 + i}\t{200 + i}\t{a}\t{b}" for i, (y, a, b) in enumerate(MRPC)]
    (mrpc / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "glue" / "SST-2").mkdir()
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text(
        "sentence\tlabel\nthe unbelievable cat sat \t1\na dog ran\t0\n")
    return tmp_path / "glue"


@pytest.fixture
def glove(tmp_path) -> Path:
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in GLOVE.items()))
    return path


def config(data: Path, models: dict[str, Path], out: Path, **kw) -> AugmentConfig:
    base = dict(task="mrpc", data_dir=data, mlm=str(models["mlm"]), out=out, rounds=4, top_k=5, seed=3,
                chunk_size=2, device="cpu")
    return AugmentConfig(**{**base, **kw})


def outputs(out: Path) -> tuple[bytes, bytes]:
    return out.read_bytes(), sidecars(out)[0].read_bytes()


# --------------------------------------------------------------------------- candidates


def test_stopwords_are_the_references_list():
    assert len(STOPWORDS) == 173
    assert {"i", "the", "don't", "'s", "'re", "wouldn't", "y", "ma"} <= STOPWORDS and "cat" not in STOPWORDS


def test_candidates_hand_worked(models):
    from transformers import BertTokenizer

    split = Splitter(BertTokenizer.from_pretrained(models["mlm"]))
    s = split("The cats sat on the UNBELIEVABLE mat, don't e-mail 3 times [MASK] !")
    assert s.tokens == ("the", "cats", "sat", "on", "the", "unbelievable", "mat", ",", "don", "'", "t",
                        "e", "-", "mail", "3", "times", "[MASK]", "!")
    # stopwords (the, on, don, t), punctuation, digits and [MASK] are not candidates; "e" is
    assert [s.tokens[i] for i in s.positions] == ["cats", "sat", "unbelievable", "mat", "e", "mail", "times"]
    assert [len(s.pieces[i]) for i in s.positions] == [2, 1, 3, 1, 1, 1, 1]  # times -> [UNK]: one piece
    assert s.pieces[5] == ("un", "##believ", "##able") and s.pieces[15] == ("[UNK]",)


def test_masked_lm_input_is_the_references(models):
    model, tok, missing = load_mlm(str(models["mlm"]), force=False)
    assert missing == []
    mlm = MaskedLM(model, tok, top_k=5, batch_tokens=64, device=torch.device("cpu"))
    s = Splitter(tok)("the cats sat")
    ids, seg1, at = mlm.input_for(s, 2)  # "sat", after [CLS] the cat ##s
    v = {w: i for i, w in enumerate(VOCAB)}
    words = ["[CLS]", "the", "cat", "##s", "[MASK]", "[SEP]", "the", "cat", "##s", "sat", "[SEP]"]
    assert ids == [v[w] for w in words] and seg1 == 6 and at == 4
    long = Sentence(("cat",) * 70, (("cat",),) * 70, tuple(range(70)))
    assert len(mlm.input_for(long, 0)[0]) == 64  # truncated to the model's 64 positions
    assert mlm.input_for(long, 63) is None and mlm.input_for(long, 62)[2] == 63


def test_batched_predictions_equal_one_unpadded_row_at_a_time(models):
    model, tok, _ = load_mlm(str(models["mlm"]), force=False)
    mlm = MaskedLM(model, tok, top_k=6, batch_tokens=40, device=torch.device("cpu"))
    sents = [Splitter(tok)(t) for t in ("the cat sat on the mat", "a big red dog ran", "he said")]
    rows = [mlm.input_for(s, p) for s in sents for p in s.positions]
    got = mlm.predict(rows)
    for (ids, seg1, at), words in zip(rows, got, strict=True):  # the reference: model(tokens, segments), argsort
        types = [0] * seg1 + [1] * (len(ids) - seg1)
        with torch.no_grad():
            logits = model(torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0, at]
        top = [VOCAB[i] for i in torch.argsort(logits, descending=True)[:6].tolist()]
        assert words == [w for w in top if w.find("##")]


# --------------------------------------------------------------------------- GloVe


def test_glove_neighbours_match_brute_force_cosine(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)] + ["<unk>", "w5", "Paris", "lyon"]
    vectors = rng.normal(size=(len(words), 6))
    path = tmp_path / "g.txt"
    path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in v)}\n" for w, v in zip(words, vectors, strict=True)))
    names, unit = load_glove(path, lines=63)  # "lyon" is past the line limit
    assert len(names) == 63
    near = glove_neighbours(["w0", "w5", "w17", "Paris", "lyon", "zzz"], names, unit, k=7,
                            device=torch.device("cpu"), chunk_elems=100)
    v = np.array([np.fromstring(line.split(" ", 1)[1], sep=" ") for line in path.read_text().splitlines()[:63]])
    valid = np.ones(63, bool)
    valid[[5, 60]] = False  # the first w5 (superseded by its second line) and <unk>
    unit64 = v / np.linalg.norm(v, axis=1, keepdims=True)
    for q, row in (("w0", 0), ("w5", 61), ("w17", 17), ("Paris", 62)):
        sims = np.where(valid, unit64 @ unit64[row], -np.inf)
        sims[row] = -np.inf
        expect = [names[i] for i in np.argsort(-sims, kind="stable")[:7]]
        assert near[q] == ([w.title() for w in expect] if q == "Paris" else expect)
    assert near["lyon"] == [] and near["zzz"] == []


def test_glove_file_irregular_lines(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("a 1 2 3\nb 1 2\n")
    with pytest.raises(MtdError, match=r"g.txt:2: expected a word and 3 numbers, got 3 fields"):
        load_glove(path)
    path.write_text("a 3 4 \n1 0 2\nnan 5 0\n")  # trailing blank, numeric words: the reference's split()
    words, unit = load_glove(path)
    assert words == ["a", "1", "nan"]
    np.testing.assert_allclose(unit.numpy(), [[0.6, 0.8], [0, 1], [1, 0]], rtol=1e-6)


# --------------------------------------------------------------------------- rounds, pairs


def test_pair_rows_pair_variant_r_of_a_with_variant_r_of_b():
    a = Sentence(("x", "cat", "y"), (("x",), ("cat",), ("y",)), (1,))
    b = Sentence(("dog", "z"), (("dog",), ("z",)), (0,))
    ca, cb = [[f"a{i}" for i in range(10)]], [[f"b{i}" for i in range(10)]]
    fields = ["1", "id1", "id2", "X cat Y", "Dog z"]
    rows = example_rows(fields, [3, 4], [a, b], [ca, cb], rounds=6, p=1.0, rng=np.random.default_rng((9, 4)))
    draws = np.random.default_rng((9, 4)).random((6, 2, 2))
    expect = [["1", "id1", "id2", f"x a{int(d[0, 0] * 10)} y", f"b{int(d[1, 0] * 10)} z"] for d in draws]
    assert rows[0] == fields  # the original first, verbatim
    assert rows[1:] == [r for i, r in enumerate(expect) if r not in expect[:i]]
    assert len({r[3] for r in rows[1:]}) > 1 and len({r[4] for r in rows[1:]}) > 1  # both sentences vary


def test_p_zero_gives_the_tokenized_original_once():
    a = Sentence(("x", "cat"), (("x",), ("cat",)), (1,))
    rows = example_rows(["X Cat!", "1"], [0], [a], [[["dog"]]], rounds=5, p=0.0, rng=np.random.default_rng(0))
    assert rows == [["X Cat!", "1"], ["x cat", "1"]]  # as the reference: the join differs from the raw text


# --------------------------------------------------------------------------- end to end


def test_deterministic_readable_and_pairs_both_sentences(tmp_path, data, models, glove):
    one, two = tmp_path / "one" / "aug.tsv", tmp_path / "two" / "aug.tsv"
    done = augment_task(config(data, models, one, glove=glove))
    augment_task(config(data, models, two, glove=glove, chunk_size=2))
    assert outputs(one) == outputs(two)
    split, source = read_augmented("mrpc", one)
    orig = read_split("mrpc", "train", data)
    assert len(split) == len(source) == done.rows and done.examples == len(MRPC)
    assert (np.diff(source) >= 0).all() and set(source) == set(range(len(MRPC)))
    np.testing.assert_array_equal(split.labels, orig.labels[source])
    firsts = np.flatnonzero(np.r_[True, np.diff(source) > 0])
    assert [split.text_a[i] for i in firsts] == orig.text_a and [split.text_b[i] for i in firsts] == orig.text_b
    assert split.text_b[0] == 'He said "the dog ran."'  # quotes survive (unquoted TSV)
    assert all(len(set(np.flatnonzero(source == e))) <= 5 for e in range(len(MRPC)))  # <= N + 1 rows
    rows_a = [split.text_a[i] for i in np.flatnonzero(source == 3)[1:]]
    rows_b = [split.text_b[i] for i in np.flatnonzero(source == 3)[1:]]
    assert len(set(rows_a)) > 1 and len(set(rows_b)) > 1  # A varies with B (not B against a fixed A)
    settings = sidecars(one)[1].read_text()
    for key in ('"top_k": 5', '"p": 0.4', '"rounds": 4', '"seed": 3', '"glove_sha256"', '"source_sha256"'):
        assert key in settings


def test_resume_after_deleting_the_output_and_after_some_shards(tmp_path, data, models, monkeypatch):
    ref = tmp_path / "ref" / "aug.tsv"
    augment_task(config(data, models, ref))
    out = tmp_path / "run" / "aug.tsv"
    augment_task(config(data, models, out))
    out.unlink()
    augment_task(config(data, models, out))
    assert outputs(out) == outputs(ref)

    out = tmp_path / "partial" / "aug.tsv"
    real, calls = augment._chunk, []

    def failing(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(augment, "_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        augment_task(config(data, models, out))
    assert sorted(p.name for p in sidecars(out)[2].glob("chunk-*")) == ["chunk-000000000.json",
                                                                          "chunk-000000002.json"]
    calls.clear()
    monkeypatch.setattr(augment, "_chunk", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    augment_task(config(data, models, out))
    assert calls == [4] and outputs(out) == outputs(ref) and not sidecars(out)[2].exists()


def test_a_finished_output_is_kept_and_other_settings_refused(tmp_path, data, models):
    out = tmp_path / "aug.tsv"
    augment_task(config(data, models, out))
    before = out.stat().st_mtime_ns
    assert augment_task(config(data, models, out)).rows == len(read_augmented("mrpc", out)[1])
    assert out.stat().st_mtime_ns == before
    with pytest.raises(MtdError, match=r"other settings \(seed 3"):
        augment_task(config(data, models, out, seed=4))


def test_an_mlm_without_its_head_is_refused_unless_forced(tmp_path, data, models, caplog):
    cfg = config(data, models, tmp_path / "aug.tsv", mlm=str(models["headless"]), limit=2)
    with pytest.raises(MtdError, match=r"has no masked-LM head .*cls\.predictions.*--force-mlm"):
        augment_task(cfg)
    with caplog.at_level(logging.WARNING):
        done = augment_task(replace(cfg, force_mlm=True))
    assert done.examples == 2 and "newly initialised MLM head" in caplog.text


def test_without_glove_multi_piece_words_stay_and_a_warning_says_so(tmp_path, data, models, glove, caplog):
    cfg = config(data, models, tmp_path / "no" / "aug.tsv", task="sst-2", p=1.0, rounds=5)
    with caplog.at_level(logging.WARNING):
        augment_task(cfg)
    assert "no --glove: 1 multi-piece candidate words (1 distinct) stay unchanged" in caplog.text
    split, source = read_augmented("sst-2", cfg.out)
    first = [t.split() for t, s in zip(split.text_a, source, strict=True) if s == 0][1:]
    assert first and all(t[1] == "unbelievable" for t in first)
    augment_task(config(data, models, tmp_path / "yes" / "aug.tsv", task="sst-2", p=1.0, rounds=5, glove=glove))
    split, source = read_augmented("sst-2", tmp_path / "yes" / "aug.tsv")
    swapped = {t.split()[1] for t, s in zip(split.text_a, source, strict=True) if s == 0}
    assert swapped - {"unbelievable"} <= {"incredible", "amazing", "astonishing", "table", "cats"}
    assert swapped & {"incredible", "amazing", "astonishing"}


@pytest.mark.skipif(not SHARED_MRPC.is_file(), reason="no shared MRPC data")
def test_real_mrpc_rows_round_trip(tmp_path, models):
    (tmp_path / "MRPC").mkdir()
    head = SHARED_MRPC.read_bytes().split(b"\n")[:21]
    (tmp_path / "MRPC" / "train.tsv").write_bytes(b"\n".join(head) + b"\n")
    out = tmp_path / "aug.tsv"
    augment_task(config(tmp_path, models, out, rounds=2, chunk_size=8))
    split, source = read_augmented("mrpc", out)
    orig = read_split("mrpc", "train", tmp_path)
    firsts = np.flatnonzero(np.r_[True, np.diff(source) > 0])
    assert len(orig) == 20 and [split.text_a[i] for i in firsts] == orig.text_a
    assert [split.guids[i] for i in firsts] == orig.guids


# --------------------------------------------------------------------------- CLI


def cli_run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        run_command(cli, [str(a) for a in args], prog="mtd-cache")
    got = capsys.readouterr()
    return exit_.value.code, got.out, got.err


def test_cli_one_line_errors(tmp_path, capsys):
    code, _, err = cli_run(["augment", "--task", "mrpc", "--data-dir", tmp_path / "nowhere"], capsys)
    assert code == 2 and "Invalid value for '--data-dir': Directory" in err and err.count("\n") == 1
    code, _, err = cli_run(["augment", "--task", "mrpc", "--data-dir", tmp_path], capsys)
    assert code == 2 and err.startswith("mtd-cache: error: GLUE mrpc train file not found") and err.count("\n") == 1
    code, _, err = cli_run(["augment", "--task", "nosuch", "--data-dir", tmp_path], capsys)
    assert code == 2 and "unknown GLUE task 'nosuch'" in err and err.count("\n") == 1
    code, _, err = cli_run(["augment", "--task", "mrpc", "--data-dir", tmp_path, "--p", "1.5"], capsys)
    assert code == 2 and "--p 1.5: must be in [0, 1]" in err


def test_cli_writes_the_default_out(tmp_path, data, models, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_run(["augment", "--task", "MRPC", "--data-dir", data, "--mlm", models["mlm"],
                              "--rounds", "2", "--limit", "3", "--seed", "1"], capsys)
    assert code == 0, err
    path = Path("cache/mrpc/augmented/train_aug.tsv")
    assert out.startswith(f"wrote {path}: ") and out.rstrip().endswith("rows from 3 examples")
    assert len(read_augmented("mrpc", path)[1]) == int(out.split(": ")[1].split()[0])
