"""GLUE tasks: one table of task facts, the TSV readers, the metrics, the text teachers' chance-level check.

In the spirit of Hugging Face's ``task_to_keys``: a task is a row in ``GLUE_TASKS``,
not a class. The row says where each split's file is, which columns hold the
text and the label, the label names in a fixed order (label id = position), the
metric, and the Hugging Face ``datasets`` config of the same data.

Column facts follow the official GLUE TSV layouts as read by google-research
bert ``run_classifier.py`` and TinyBERT ``data_processing.py`` (MRPC: label 0,
strings 3 and 4 behind a header; CoLA train/dev: no header, label 1, sentence 3;
SST-2: ``sentence\\tlabel`` header; MNLI: strings 8 and 9, gold label last).
Label orders are those processors' ``get_labels()``, so a checkpoint trained by
them has the same class ids. STS-B (regression) is left out: its float scores
do not fit the int64 label axis of the store.

GLUE text contains unbalanced double quotes (an MRPC dev string begins with
``"``), so files are read with ``csv.QUOTE_NONE``: a quote is just a character.
The MRPC header begins with a UTF-8 BOM; files are opened as ``utf-8-sig``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..core.errors import MtdError
from ..core.safe_files import not_utf8
from .chance import chance_reason

log = logging.getLogger(__name__)

SPLITS = ("train", "dev")
HF_DATASET = "nyu-mll/glue"  # the Hub id of the GLUE loader ("glue" redirects to it)
CHANCE_MAX_MCC = 0.05  # besides the chance rule (chance.py): a text teacher with a Matthews correlation at most this


@dataclass(frozen=True)
class TsvLayout:
    """Where one split lives and which columns mean what (0-based; negative counts from the end)."""

    file: str  # file name inside the task folder
    num_columns: int  # every row must have exactly this many tab-separated fields
    text_a: int
    text_b: int | None  # None for single-sentence tasks
    label: int
    has_header: bool
    guid: tuple[int, ...] = ()  # columns forming a stable example id; () = line number


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its files, its label order, its metrics, its Hugging Face config."""

    name: str  # canonical name, as stored in the store's ``task`` attribute
    dir_name: str  # folder under a GLUE data root (``glue_data/MRPC``)
    train: TsvLayout
    dev: TsvLayout
    label_names: tuple[str, ...]  # fixed order: label id i is label_names[i]
    metric: str  # primary metric, a key of compute_metrics' result
    extra_metrics: tuple[str, ...]
    hf_config: str
    hf_text_keys: tuple[str, str | None]
    sizes: tuple[int, int]  # (train, dev) examples: the official files' and the Hub's
    augment_rounds: int  # TinyBERT's data augmentation: candidates drawn per word (data_augmentation.py's N)
    ild_epochs: int  # TinyBERT stage 1 (intermediate-layer distillation) epochs for ``--set task_epochs=true``
    hf_dev_split: str = "validation"
    aliases: tuple[str, ...] = ()
    kind: ClassVar[str] = "text"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.train.text_b is not None

    @property
    def dev_file(self) -> str:
        return self.dev.file

    def layout(self, split: str) -> TsvLayout:
        """The TSV layout of ``split`` ("train" or "dev"; "validation" is accepted for dev)."""
        return self.train if _split_name(split) == "train" else self.dev

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        """The task's primary metric of logits (N, C) or class ids (N,) against gold labels."""
        return compute_metrics(self, predictions, labels)[self.metric]

    def read(self, split: str, data_dir: str | Path | None = None) -> GlueSplit:
        """A split as text and label ids: the official TSV files under ``data_dir``, or the Hub's copy when None."""
        return load_hf_split(self, split) if data_dir is None else read_split(self, split, data_dir)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("contradiction", "entailment", "neutral")  # bert's MnliProcessor order, not HF's
_MRPC = TsvLayout("train.tsv", 5, text_a=3, text_b=4, label=0, has_header=True, guid=(1, 2))
_COLA = TsvLayout("train.tsv", 4, text_a=3, text_b=None, label=1, has_header=False)
_SST2 = TsvLayout("train.tsv", 2, text_a=0, text_b=None, label=1, has_header=True)
_IDX_PAIR = TsvLayout("train.tsv", 4, text_a=1, text_b=2, label=3, has_header=True, guid=(0,))
_QQP = TsvLayout("train.tsv", 6, text_a=3, text_b=4, label=5, has_header=True, guid=(0,))
# MNLI train has label1 + gold_label (12 columns); dev has label1..label5 + gold_label (16).
_MNLI_TRAIN = TsvLayout("train.tsv", 12, text_a=8, text_b=9, label=-1, has_header=True, guid=(0,))
_MNLI_DEV = TsvLayout("dev_matched.tsv", 16, text_a=8, text_b=9, label=-1, has_header=True, guid=(0,))


def _dev(layout: TsvLayout, file: str = "dev.tsv") -> TsvLayout:
    """The dev layout: the train layout under another file name."""
    return TsvLayout(file, layout.num_columns, layout.text_a, layout.text_b, layout.label,
                     layout.has_header, layout.guid)


# sizes: the official TSVs' (= the Hub's) examples. augment_rounds: TinyBERT's data_augmentation.py
# ``default_params`` N. ild_epochs: TinyBERT's task_distill.py ``default_params`` epochs (dead code there,
# the intended stage-1 length); WNLI, absent there, takes RTE's (the smallest pair tasks), MNLI-mm MNLI's.
GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("mrpc", "MRPC", _MRPC, _dev(_MRPC), _BINARY, "accuracy", ("f1",),
             "mrpc", ("sentence1", "sentence2"), (3668, 408), 30, 20),
    GlueTask("cola", "CoLA", _COLA, _dev(_COLA), _BINARY, "mcc", ("accuracy",),
             "cola", ("sentence", None), (8551, 1043), 30, 50),
    GlueTask("sst-2", "SST-2", _SST2, _dev(_SST2), _BINARY, "accuracy", (),
             "sst2", ("sentence", None), (67349, 872), 20, 10, aliases=("sst2",)),
    GlueTask("qnli", "QNLI", _IDX_PAIR, _dev(_IDX_PAIR), _NLI2, "accuracy", (),
             "qnli", ("question", "sentence"), (104743, 5463), 20, 10),
    GlueTask("rte", "RTE", _IDX_PAIR, _dev(_IDX_PAIR), _NLI2, "accuracy", (),
             "rte", ("sentence1", "sentence2"), (2490, 277), 30, 20),
    GlueTask("wnli", "WNLI", _IDX_PAIR, _dev(_IDX_PAIR), _BINARY, "accuracy", (),
             "wnli", ("sentence1", "sentence2"), (635, 71), 30, 20),
    GlueTask("qqp", "QQP", _QQP, _dev(_QQP), _BINARY, "accuracy", ("f1",),
             "qqp", ("question1", "question2"), (363846, 40430), 10, 5),
    GlueTask("mnli", "MNLI", _MNLI_TRAIN, _MNLI_DEV, _NLI3, "accuracy", (),
             "mnli", ("premise", "hypothesis"), (392702, 9815), 10, 5, hf_dev_split="validation_matched",
             aliases=("mnli-m",)),
    GlueTask("mnli-mm", "MNLI", _MNLI_TRAIN, _dev(_MNLI_DEV, "dev_mismatched.tsv"), _NLI3,
             "accuracy", (), "mnli", ("premise", "hypothesis"), (392702, 9832), 10, 5,
             hf_dev_split="validation_mismatched"),
)}
_BY_NAME = {alias: t for t in GLUE_TASKS.values() for alias in (t.name, *t.aliases)}


def get_glue_task(name: str | GlueTask) -> GlueTask:
    """The task called ``name`` (case-insensitive, aliases allowed); MtdError lists the valid names."""
    if isinstance(name, GlueTask) or getattr(name, "kind", None) == "text":
        return name  # a task object: a GLUE row, or a task file's text task
    task = _BY_NAME.get(str(name).strip().lower())
    if task is None:
        raise MtdError(f"unknown GLUE task {name!r}; valid: {', '.join(sorted(_BY_NAME))}")
    return task


def _split_name(split: str) -> str:
    """"train" or "dev" ("validation" is HF's name for dev)."""
    name = {"validation": "dev"}.get(split, split)
    if name not in SPLITS:
        raise MtdError(f"unknown split {split!r}; valid: train, dev")
    return name


@dataclass(frozen=True)
class GlueSplit:
    """One split as parallel columns; ``labels[i]`` indexes ``label_names``."""

    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray  # (N,) int64
    guids: list[str]  # stable example ids: "<split>-<id columns or line number>"
    source: str  # the file read, or "hf:<dataset>/<config>"

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- TSV files


def split_path(task: str | GlueTask, split: str, data_dir: str | Path) -> Path:
    """The TSV file of ``split``: ``data_dir/<Task>/<file>`` (a GLUE root) or ``data_dir/<file>``."""
    task = get_glue_task(task)
    layout = task.layout(split)
    candidates = [Path(data_dir) / task.dir_name / layout.file, Path(data_dir) / layout.file]
    for path in candidates:
        if path.is_file():
            return path
    raise MtdError(
        f"GLUE {task.name} {_split_name(split)} file not found: {candidates[0]} (nor {candidates[1]}); "
        f"pass --data-dir with the GLUE data (a folder holding {task.dir_name}/{layout.file}), "
        f"or install the datasets extra (pip install 'mtd-cache[datasets]') to load it from the Hub")


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line; a leading BOM is dropped."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            for fields in reader:
                if fields:  # a blank line (e.g. a trailing one) carries no example
                    yield reader.line_num, fields
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except csv.Error as exc:  # a field over csv's limit (131,072 characters), a NUL byte
            raise MtdError(f"{path}:{reader.line_num}: {exc}") from None


def _check_header(path: Path, line: int, fields: list[str], layout: TsvLayout,
                  labels: Mapping[str, int]) -> None:
    """Refuse a header with the wrong width, or a "header" that is really a data row."""
    if len(fields) != layout.num_columns:
        raise MtdError(f"{path}:{line}: header has {len(fields)} tab-separated columns, "
                       f"expected {layout.num_columns}")
    if fields[layout.label].strip() in labels:
        raise MtdError(f"{path}:{line}: expected a header line but found a data row "
                       f"(label {fields[layout.label]!r}); is the header missing?")


def _label_id(path: Path, line: int, cell: str, labels: Mapping[str, int]) -> int:
    label = labels.get(cell.strip())
    if label is None:
        raise MtdError(f"{path}:{line}: unknown label {cell!r}; valid: {', '.join(labels)}")
    return label


def read_split(task: str | GlueTask, split: str, data_dir: str | Path) -> GlueSplit:
    """Read one GLUE split from its official TSV file.

    Every row must have the layout's column count and a known label, else an
    MtdError names the file and line. Text is kept exactly as in the file.
    """
    task = get_glue_task(task)
    split, layout = _split_name(split), task.layout(split)
    path = split_path(task, split, data_dir)
    labels = {name: i for i, name in enumerate(task.label_names)}
    text_a: list[str] = []
    text_b: list[str] = []
    ids: list[int] = []
    guids: list[str] = []
    rows = _rows(path)
    if layout.has_header:
        line, fields = next(rows, (0, []))
        if line:
            _check_header(path, line, fields, layout, labels)
    for line, fields in rows:
        if len(fields) != layout.num_columns:
            raise MtdError(f"{path}:{line}: expected {layout.num_columns} tab-separated columns, "
                           f"got {len(fields)}")
        ids.append(_label_id(path, line, fields[layout.label], labels))
        text_a.append(fields[layout.text_a])
        if layout.text_b is not None:
            text_b.append(fields[layout.text_b])
        key = "-".join(fields[c] for c in layout.guid) if layout.guid else str(line)
        guids.append(f"{split}-{key}")
    log.info("read %d %s examples of %s from %s", len(ids), split, task.name, path)
    return GlueSplit(task.name, split, text_a, text_b if layout.text_b is not None else None,
                     np.asarray(ids, dtype=np.int64), guids, str(path))


# --------------------------------------------------------------------------- Hugging Face


def hf_label_map(task: GlueTask, hf_label_names: Sequence[str]) -> np.ndarray:
    """Array mapping a Hugging Face label id to this table's label id.

    HF names binary classes ("not_equivalent", "equivalent") where the TSVs say
    "0", "1": HF id i then means TSV label str(i). NLI names are shared but MNLI's
    order differs (HF: entailment, neutral, contradiction).
    """
    ours = {name: i for i, name in enumerate(task.label_names)}
    mapped = [ours.get(name, ours.get(str(i), -1)) for i, name in enumerate(hf_label_names)]
    if len(mapped) != task.num_labels or sorted(mapped) != list(range(task.num_labels)):
        raise MtdError(f"Hugging Face labels {list(hf_label_names)} of GLUE {task.name} do not "
                       f"match {list(task.label_names)}")
    return np.asarray(mapped, dtype=np.int64)


def split_from_hf_columns(task: str | GlueTask, split: str, columns: Mapping[str, Sequence],
                          hf_label_names: Sequence[str], source: str) -> GlueSplit:
    """A GlueSplit from a Hugging Face GLUE split given as columns (``Dataset.to_dict()``)."""
    task, split = get_glue_task(task), _split_name(split)
    hf_labels = np.asarray(columns["label"], dtype=np.int64)
    if hf_labels.size and (hf_labels.min() < 0 or hf_labels.max() >= len(hf_label_names)):
        raise MtdError(f"{source}: labels outside 0..{len(hf_label_names) - 1} "
                       f"(an unlabelled test split?)")
    key_a, key_b = task.hf_text_keys
    return GlueSplit(
        task.name, split, [str(s) for s in columns[key_a]],
        [str(s) for s in columns[key_b]] if key_b else None,
        hf_label_map(task, hf_label_names)[hf_labels],
        [f"{split}-{i}" for i in columns["idx"]], source)


def load_hf_split(task: str | GlueTask, split: str, cache_dir: str | Path | None = None) -> GlueSplit:
    """Load a split through Hugging Face ``datasets`` (the optional ``datasets`` extra).

    Note that HF's MRPC is the tokenized SentEval text, not the untokenized TSV.
    """
    task, split = get_glue_task(task), _split_name(split)
    try:
        import datasets  # optional extra: imported only when asked for
    except ImportError as exc:
        raise MtdError("loading GLUE from the Hugging Face Hub needs the datasets package: "
                       "pip install 'mtd-cache[datasets]' (or pass --data-dir with the TSV files)"
                       ) from exc
    hf_split = "train" if split == "train" else task.hf_dev_split
    source = f"hf:{HF_DATASET}/{task.hf_config}[{hf_split}]"
    try:
        ds = datasets.load_dataset(HF_DATASET, task.hf_config, split=hf_split,
                                   cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:  # network, hub, cache: all reach the user as one line
        raise MtdError(f"could not load {source}: {exc}; pass --data-dir with the TSV files") from exc
    log.info("loaded %d %s examples of %s from %s", len(ds), split, task.name, source)
    return split_from_hf_columns(task, split, ds.to_dict(), ds.features["label"].names, source)


# --------------------------------------------------------------------------- metrics


def _class_ids(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Predicted class ids from ids (N,) or logits (N, C), checked against the labels."""
    pred = np.asarray(predictions)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.ndim != 1 or pred.shape != np.shape(labels):
        raise MtdError(f"predictions of shape {np.shape(predictions)} do not match "
                       f"{len(labels)} labels")
    pred = pred.astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_labels):
        raise MtdError(f"predicted class ids must be in 0..{num_labels - 1}, "
                       f"got {pred.min()}..{pred.max()}")
    return pred


def _metric(name: str, pred: np.ndarray, gold: np.ndarray) -> float:
    """One named metric; F1 is of class 1 (MRPC "equivalent", QQP "duplicate")."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if name == "accuracy":
        return float(accuracy_score(gold, pred))
    if name == "f1":
        return float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0))
    if name == "mcc":
        # sklearn returns 0 when a row or column of the confusion matrix is empty
        return float(matthews_corrcoef(gold, pred))
    raise MtdError(f"unknown metric {name!r}; valid: accuracy, f1, mcc")


def compute_metrics(task: str | GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, the task's primary metric (``task.metric``) and its extras, as fractions."""
    task = get_glue_task(task)
    gold = np.asarray(labels, dtype=np.int64)
    pred = _class_ids(predictions, gold, task.num_labels)
    if gold.size == 0:
        raise MtdError(f"no examples to score for GLUE {task.name}")
    names = dict.fromkeys(("accuracy", task.metric, *task.extra_metrics))
    return {name: _metric(name, pred, gold) for name in names}


def chance_level_check(task: str | GlueTask, predictions: np.ndarray, labels: np.ndarray,
                       dev_metric: float | None = None) -> str | None:
    """Why a teacher is at chance level on dev, or None if it is not.

    At chance: the chance rule (``chance.chance_reason``: a single predicted class, or dev accuracy at most
    1 point above the majority class); or Matthews correlation
    at most CHANCE_MAX_MCC. ``dev_metric``, the teacher's recorded primary
    metric, must agree with the predictions (a stale or percent-scaled value is
    refused rather than silently trusted).
    """
    task = get_glue_task(task)
    gold = np.asarray(labels, dtype=np.int64)
    pred = _class_ids(predictions, gold, task.num_labels)
    scores = compute_metrics(task, pred, gold)
    if dev_metric is not None and abs(dev_metric - scores[task.metric]) > 1e-4:
        raise MtdError(f"recorded dev {task.metric} {dev_metric!r} does not match "
                       f"{scores[task.metric]:.6f} computed from the predictions")
    reason = chance_reason(pred, gold, task.label_names, "dev")
    if reason is not None:
        return reason
    mcc = scores["mcc"] if "mcc" in scores else _metric("mcc", pred, gold)
    if mcc <= CHANCE_MAX_MCC:
        return f"dev Matthews correlation {mcc:.4f} <= {CHANCE_MAX_MCC}"
    return None
