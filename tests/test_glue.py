"""GLUE table, TSV readers, Hugging Face mapping, metrics and the chance-level rule."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mtd_cache.core.errors import MtdError
from mtd_cache.tasks import glue
from mtd_cache.tasks.glue import (
    GLUE_TASKS,
    chance_level_check,
    compute_metrics,
    get_glue_task,
    read_split,
    split_from_hf_columns,
)

SHARED = Path(os.environ.get("MTD_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
GLUE_DIR = SHARED / "data" / "glue"
needs_shared = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"no shared GLUE data at {GLUE_DIR}")

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- the table


def test_table_names_aliases_and_label_orders():
    assert get_glue_task("SST2") is get_glue_task("sst-2") is GLUE_TASKS["sst-2"]
    assert get_glue_task(" MRPC ").name == "mrpc"
    assert GLUE_TASKS["mrpc"].label_names == ("0", "1")
    assert GLUE_TASKS["cola"].label_names == ("0", "1")
    assert GLUE_TASKS["mnli"].label_names == ("contradiction", "entailment", "neutral")
    assert GLUE_TASKS["mnli"].dev_file == "dev_matched.tsv"
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["cola"].metric == "mcc" and GLUE_TASKS["mrpc"].extra_metrics == ("f1",)
    assert GLUE_TASKS["sst-2"].hf_config == "sst2" and not GLUE_TASKS["sst-2"].is_pair


def test_every_fact_of_a_task_is_a_field_of_its_row():
    """TinyBERT's augmentation rounds and stage-1 epochs, and the splits' sizes, live in the one table."""
    facts = {name: (t.augment_rounds, t.ild_epochs, t.sizes) for name, t in GLUE_TASKS.items()}
    assert facts == {"mrpc": (30, 20, (3668, 408)), "cola": (30, 50, (8551, 1043)), "sst-2": (20, 10, (67349, 872)),
                     "qnli": (20, 10, (104743, 5463)), "rte": (30, 20, (2490, 277)), "wnli": (30, 20, (635, 71)),
                     "qqp": (10, 5, (363846, 40430)), "mnli": (10, 5, (392702, 9815)),
                     "mnli-mm": (10, 5, (392702, 9832))}


def test_unknown_task_lists_valid_names():
    with pytest.raises(MtdError, match=r"'stsb'.*cola.*mrpc.*sst-2.*sst2"):
        get_glue_task("stsb")


def test_unknown_split():
    with pytest.raises(MtdError, match=r"'test'.*train, dev"):
        GLUE_TASKS["mrpc"].layout("test")


# --------------------------------------------------------------------------- readers, small files


def test_mrpc_bom_header_pairs_and_quotes(tmp_path):
    # an unbalanced quote must not swallow the tab and the next line (csv.QUOTE_NONE)
    write(tmp_path / "MRPC" / "train.tsv", MRPC_HEADER
          + '1\t11\t12\tHe said "hi.\t"Hi", he said.\n'
          + '0\t21\t22\tA \'single\' quote\tB\n')
    s = read_split("mrpc", "train", tmp_path)
    assert s.text_a == ['He said "hi.', "A 'single' quote"]
    assert s.text_b == ['"Hi", he said.', "B"]
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [1, 0]
    assert s.guids == ["train-11-12", "train-21-22"]
    assert s.task == "mrpc" and s.split == "train" and len(s) == 2


def test_data_dir_may_be_the_task_folder(tmp_path):
    write(tmp_path / "dev.tsv", MRPC_HEADER + "1\t1\t2\ta\tb\n")
    assert read_split("mrpc", "validation", tmp_path).text_a == ["a"]


def test_cola_has_no_header_first_row_is_data(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tFirst one.\nr-67\t0\t*\tSecond \"one\n")
    s = read_split("cola", "train", tmp_path)
    assert s.text_a == ["First one.", 'Second "one'] and s.text_b is None
    assert s.labels.tolist() == [1, 0]
    assert s.guids == ["train-1", "train-2"]


def test_sst2_header_skipped_trailing_space_kept_blank_line_ignored(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nit 's good . \t1\nbad \t0\n\n")
    s = read_split("sst2", "dev", tmp_path)
    assert s.text_a == ["it 's good . ", "bad "] and s.labels.tolist() == [1, 0]


def test_missing_header_is_refused(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "good\t1\nbad\t0\n")
    with pytest.raises(MtdError, match=r"train\.tsv:1: expected a header.*missing"):
        read_split("sst-2", "train", tmp_path)


def test_malformed_row_names_file_and_line(tmp_path):
    write(tmp_path / "MRPC" / "train.tsv", MRPC_HEADER + "1\t1\t2\ta\tb\n0\t3\t4\tonly a\n")
    with pytest.raises(MtdError, match=r"MRPC/train\.tsv:3: expected 5 tab-separated columns, got 4"):
        read_split("mrpc", "train", tmp_path)


def test_unknown_label_names_file_line_and_value(tmp_path):
    write(tmp_path / "CoLA" / "dev.tsv", "a\t1\t\tx\nb\t2\t\ty\n")
    with pytest.raises(MtdError, match=r"CoLA/dev\.tsv:2: unknown label '2'; valid: 0, 1"):
        read_split("cola", "dev", tmp_path)


def test_missing_file_gives_path_and_hints(tmp_path):
    with pytest.raises(MtdError) as err:
        read_split("cola", "train", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "CoLA" / "train.tsv") in msg
    assert "--data-dir" in msg and "mtd-cache[datasets]" in msg


def test_mnli_dev_matched_gold_label_last(tmp_path):
    header = "\t".join(["index", "promptID", "pairID", "genre", "s1bp", "s2bp", "s1p", "s2p",
                        "sentence1", "sentence2", "label1", "label2", "label3", "label4", "label5",
                        "gold_label"])
    row = ["7", "p", "7n", "slate", "", "", "", "", "Premise.", "Hypothesis.",
           "neutral", "neutral", "entailment", "neutral", "neutral", "neutral"]
    write(tmp_path / "MNLI" / "dev_matched.tsv", header + "\n" + "\t".join(row) + "\n")
    s = read_split("mnli", "dev", tmp_path)
    assert (s.text_a, s.text_b, s.labels.tolist(), s.guids) == (
        ["Premise."], ["Hypothesis."], [2], ["dev-7"])


# --------------------------------------------------------------------------- readers, real files


@needs_shared
def test_real_mrpc_train():
    s = read_split("mrpc", "train", GLUE_DIR)
    assert len(s) == 3668 and int((s.labels == 1).sum()) == 2474
    assert s.text_a[0] == ('Amrozi accused his brother, whom he called "the witness", '
                           "of deliberately distorting his evidence.")
    assert s.text_b[0] == ('Referring to him as only "the witness", Amrozi accused his brother '
                           "of deliberately distorting his evidence.")
    assert s.guids[0] == "train-702876-702977" and len(set(s.guids)) == len(s)


@needs_shared
def test_real_mrpc_dev_unbalanced_quote():
    s = read_split("mrpc", "dev", GLUE_DIR)
    assert len(s) == 408 and int((s.labels == 1).sum()) == 279
    assert s.text_b[0] == '"The foodservice pie business does not fit our long-term growth strategy.'


@needs_shared
@pytest.mark.parametrize("task,split,rows,ones", [
    ("cola", "train", 8551, 6023), ("cola", "dev", 1043, 721),
    ("sst-2", "train", 67349, 37569), ("sst-2", "dev", 872, 444)])
def test_real_row_and_label_counts(task, split, rows, ones):
    s = read_split(task, split, GLUE_DIR)
    assert len(s) == rows and int((s.labels == 1).sum()) == ones
    assert GLUE_TASKS[task].sizes[split == "dev"] == rows
    assert len(s.text_a) == rows and s.text_b is None


# --------------------------------------------------------------------------- Hugging Face


def test_hf_columns_map_to_the_table_label_order():
    cols = {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"],
            "label": [0, 1, 2], "idx": [5, 6, 7]}
    s = split_from_hf_columns("mnli", "validation", cols,
                              ["entailment", "neutral", "contradiction"], "hf:test")
    assert s.labels.tolist() == [1, 2, 0] and s.split == "dev" and s.guids[0] == "dev-5"
    s = split_from_hf_columns("mrpc", "train", {"sentence1": ["a"], "sentence2": ["b"], "label": [1],
                                                "idx": [0]}, ["not_equivalent", "equivalent"], "hf")
    assert s.labels.tolist() == [1] and s.text_b == ["b"]


def test_hf_unlabelled_split_is_refused():
    with pytest.raises(MtdError, match="unlabelled"):
        split_from_hf_columns("sst2", "dev", {"sentence": ["a"], "label": [-1], "idx": [0]},
                              ["negative", "positive"], "hf")


def test_load_hf_split_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MtdError, match=r"pip install 'mtd-cache\[datasets\]'"):
        glue.load_hf_split("mrpc", "train")


# --------------------------------------------------------------------------- metrics

# TP=3, FN=2, FP=1, TN=4 (class 1 positive), worked by hand:
# accuracy = 7/10; F1 = 2*3/(2*3+1+2) = 2/3;
# MCC = (3*4 - 1*2) / sqrt((3+1)(3+2)(4+1)(4+2)) = 10/sqrt(600)
GOLD = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
PRED = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 0])


def test_mrpc_metrics_by_hand():
    m = compute_metrics("mrpc", PRED, GOLD)
    assert set(m) == {"accuracy", "f1"}
    assert math.isclose(m["accuracy"], 0.7, rel_tol=1e-9)
    assert math.isclose(m["f1"], 2 / 3, rel_tol=1e-9)


def test_cola_mcc_by_hand_and_logits_accepted():
    logits = np.stack([1 - PRED, PRED], axis=1).astype(np.float32)  # argmax gives PRED
    m = compute_metrics("cola", logits, GOLD)
    assert set(m) == {"accuracy", "mcc"}
    assert math.isclose(m["mcc"], 10 / math.sqrt(600), rel_tol=1e-9)


def test_metrics_refuse_mismatched_or_out_of_range_predictions():
    with pytest.raises(MtdError, match="do not match 10 labels"):
        compute_metrics("mrpc", PRED[:9], GOLD)
    with pytest.raises(MtdError, match="0..1"):
        compute_metrics("mrpc", PRED * 2, GOLD)


# --------------------------------------------------------------------------- chance level

GOLD70 = np.array([1] * 70 + [0] * 30)  # majority baseline 0.70


def _preds(ones_right: int, zeros_right: int) -> np.ndarray:
    """Predictions on GOLD70 with the first ``ones_right`` ones and ``zeros_right`` zeros right."""
    p = 1 - GOLD70
    p[:ones_right] = 1
    p[70:70 + zeros_right] = 0
    return p


def test_chance_single_class():
    reason = chance_level_check("mrpc", np.ones(100, dtype=np.int64), GOLD70)
    assert reason is not None and "single class ('1')" in reason


def test_chance_accuracy_within_one_point_of_majority():
    assert "majority" in chance_level_check("mrpc", _preds(61, 10), GOLD70)  # 0.71, MCC 0.24
    assert chance_level_check("mrpc", _preds(62, 10), GOLD70) is None  # 0.72, MCC 0.26


def test_chance_low_mcc_even_above_majority():
    gold = np.array([1] * 50 + [0] * 50)
    pred = np.array([1] * 26 + [0] * 24 + [0] * 26 + [1] * 24)  # acc 0.52 > 0.51, MCC 0.04
    reason = chance_level_check("sst-2", pred, gold)
    assert reason is not None and "Matthews correlation 0.0400" in reason


def test_chance_dev_metric_must_match_predictions():
    pred = _preds(62, 10)
    assert chance_level_check("mrpc", pred, GOLD70, dev_metric=0.72) is None
    with pytest.raises(MtdError, match="72.0"):
        chance_level_check("mrpc", pred, GOLD70, dev_metric=72.0)  # percent, not fraction
