"""Your own training loop: the KD target rules, the public API, the Hugging Face Trainer integration, the examples."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import write_image_folders

import mtd_cache
from mtd_cache.core.errors import MtdError
from mtd_cache.core.losses import kd_loss, multi_teacher_kd
from mtd_cache.store import TeacherStore
from mtd_cache.students.context import StudentContext
from mtd_cache.students.recipes import image_kd
from mtd_cache.students.record import load_done
from mtd_cache.students.run import RunRequest, plan_run, resolve_settings, run_student
from mtd_cache.students.targets import make_targets
from mtd_cache.teachers import train_teachers
from mtd_cache.teachers.dump import run_dump

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LN2, LN3 = math.log(2), math.log(3)


# ----------------------------------------------------------------------------- the rules, by hand


def _two_teachers() -> tuple[torch.Tensor, torch.Tensor]:
    """Teachers z1 = (0, ln 3), z2 = (ln 3, 0): softmax (1/4, 3/4) and (3/4, 1/4); student q = (1/3, 2/3)."""
    teachers = torch.tensor([[[0.0, LN3], [LN3, 0.0]]], dtype=torch.float64)
    student = torch.tensor([[0.0, LN2]], dtype=torch.float64)
    return student, teachers


def _ce(p: tuple[float, float]) -> float:
    """-sum p log q against the student's q = (1/3, 2/3)."""
    return -(p[0] * math.log(1 / 3) + p[1] * math.log(2 / 3))


def _h(p: tuple[float, float]) -> float:
    return -sum(x * math.log(x) for x in p)


@pytest.mark.parametrize("rule, divergence, want", [
    # weights (3/4, 1/4): mean logits (ln3/4, 3 ln3/4) -> p = (1, sqrt 3) / (1 + sqrt 3)
    ("mean_logits", "ce", _ce((1 / (1 + 3 ** 0.5), 3 ** 0.5 / (1 + 3 ** 0.5)))),  # 0.659174
    # the mixture 3/4 (1/4, 3/4) + 1/4 (3/4, 1/4) = (3/8, 5/8)
    ("mean_probs", "ce", _ce((3 / 8, 5 / 8))),  # 0.665395
    ("mean_probs", "kl", _ce((3 / 8, 5 / 8)) - _h((3 / 8, 5 / 8))),  # 0.003832
    # 3/4 CE(p1) + 1/4 CE(p2): equal to mean_probs with "ce" (linear in the target)
    ("mean_losses", "ce", 0.75 * _ce((1 / 4, 3 / 4)) + 0.25 * _ce((3 / 4, 1 / 4))),  # 0.665395
    ("mean_losses", "kl", 0.75 * _ce((1 / 4, 3 / 4)) + 0.25 * _ce((3 / 4, 1 / 4)) - _h((1 / 4, 3 / 4))),  # 0.103060
])
def test_each_rule_against_values_worked_out_by_hand(rule, divergence, want):
    student, teachers = _two_teachers()
    got = multi_teacher_kd(student, teachers, 1.0, "sum", divergence, rule, weights=[3.0, 1.0])
    assert float(got) == pytest.approx(want, abs=1e-12)
    plain = multi_teacher_kd(student, teachers, 1.0, "sum", "ce", rule)  # equal weights: p = (1/2, 1/2) for all
    assert float(plain) == pytest.approx(_ce((0.5, 0.5)), abs=1e-12)


@pytest.mark.parametrize("rule", ["mean_logits", "mean_probs", "mean_losses"])
@pytest.mark.parametrize("divergence, scale, t", [("ce", "sum_t2", 4.0), ("kl", "sum_t2", 2.0), ("ce", "mean", 1.0)])
def test_weights_on_one_teacher_are_single_teacher_kd(rule, divergence, scale, t):
    g = torch.Generator().manual_seed(0)
    student, teachers = torch.randn(8, 5, generator=g), 3 * torch.randn(8, 3, 5, generator=g)
    got = multi_teacher_kd(student, teachers, t, scale, divergence, rule, weights=[0.0, 2.5, 0.0])
    assert float(got) == pytest.approx(float(kd_loss(student, teachers[:, 1], t, scale, divergence)), rel=1e-5)


def test_the_default_rule_is_the_papers_mean_of_logits_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    student, teachers = torch.randn(16, 3, generator=g), torch.randn(16, 4, 3, generator=g)
    assert torch.equal(multi_teacher_kd(student, teachers, 2.0), kd_loss(student, teachers.mean(1), 2.0))
    assert torch.equal(multi_teacher_kd(student, teachers.mean(1), 2.0), kd_loss(student, teachers.mean(1), 2.0))
    with pytest.raises(ValueError, match="rule 'mean_probs' needs each teacher's logits"):
        multi_teacher_kd(student, teachers.mean(1), 2.0, rule="mean_probs")
    with pytest.raises(ValueError, match="teacher weights must be finite, >= 0 and not all 0"):
        multi_teacher_kd(student, teachers, 2.0, rule="mean_probs", weights=[1, -1, 0, 0])


# ----------------------------------------------------------------------------- the API reads what a run reads


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Three ResNet-8 teachers (one epoch) on a 3-class image folder task and their 9-view store."""
    root = tmp_path_factory.mktemp("api_shapes")
    path = write_image_folders(root / "data")
    train_teachers(str(path), [0, 1, 2], root / "teachers", "resnet8", None, {"epochs": 1}, device="cpu",
                   force=True)  # one epoch: at chance, and enough for the API's shapes (the gate: test_chance)
    return root, run_dump(str(path), root / "teachers", root / "s.h5", [], {})


def _image_ctx(store: TeacherStore, teachers: tuple[int, ...], **overrides) -> StudentContext:
    r = resolve_settings(image_kd, store, overrides)
    return StudentContext("resnet8", r.settings, r.requested, store, teachers, None, 0, torch.device("cpu"))


def test_the_api_returns_the_targets_a_student_run_reads(shapes):
    _, path = shapes
    store = mtd_cache.TeacherStore.open(path)
    idx, view = np.array([0, 5, 71, 3]), np.array([4, 0, 8, 2])
    for overrides, api in (({}, {}), ({"teacher_weights": [1.0, 0.0, 3.0]}, {"weights": [3.0, 1.0]}),
                           ({"kd_rule": "mean_probs"}, {"rule": "mean_probs"})):
        run = make_targets(_image_ctx(store, (0, 2), **overrides), kd=True)
        want = run(run.read(idx, view)).logits
        got = mtd_cache.KDTargets(store, [2, 0], **api).logits(torch.as_tensor(idx), view)  # any order, any type
        assert torch.equal(got, want)
    each = torch.as_tensor(store.teacher_logits([0, 2], idx, view))
    assert each.shape == (4, 2, 3)
    assert torch.equal(mtd_cache.KDTargets(store, [0, 2], rule="mean_losses").logits(idx, view), each)
    weighted = mtd_cache.KDTargets(store, [0, 2], weights=[1.0, 3.0]).logits(idx, view)
    torch.testing.assert_close(weighted, 0.25 * each[:, 0] + 0.75 * each[:, 1], rtol=1e-6, atol=1e-6)
    plain = mtd_cache.KDTargets(store, [0, 2]).logits(idx, view)
    assert torch.equal(plain, torch.as_tensor(store.mean_logits([0, 2], idx, view)))
    student = torch.randn(4, 3)
    loss = mtd_cache.KDTargets(store, [0, 2], temperature=4.0).loss(student, idx, view)
    assert float(loss) == pytest.approx(float(kd_loss(student, each.mean(1), 4.0)), rel=1e-6)
    with pytest.raises(MtdError, match=r"teachers \[0, 7\]: distinct indices of the store's teachers 0..2"):
        mtd_cache.KDTargets(store, [0, 7])
    with pytest.raises(MtdError, match="unknown rule 'median'; valid: mean_logits, mean_probs, mean_losses"):
        mtd_cache.KDTargets(store, [0, 1], rule="median")


def test_the_rule_and_weights_are_recorded_and_change_ids_only_when_set(shapes, tmp_path):
    _, path = shapes
    base = dict(store=str(path), student="resnet8", teachers=(0, 2), out=str(tmp_path / "runs"), device="cpu")
    plain = plan_run(RunRequest(**base, overrides={"epochs": 1}))
    same = plan_run(RunRequest(**base, overrides={"epochs": 1, "kd_rule": "mean_logits"}))
    assert same.run_id == plain.run_id and same.experiment == plain.experiment  # the default, given: the same run
    rec = run_student(RunRequest(**base, overrides={"epochs": 1, "kd_rule": "mean_probs",
                                                    "teacher_weights": [1, 5, 3]}))
    assert rec["run_id"] != plain.run_id and rec["experiment"] != plain.experiment
    assert (rec["kd_rule"], rec["teacher_weights"]) == ("mean_probs", [0.25, 0.75])
    assert rec["config"]["recipe"]["teacher_weights"] == [1, 5, 3]
    done = run_student(RunRequest(**base, overrides={"epochs": 1}))
    assert (done["kd_rule"], done["teacher_weights"]) == ("mean_logits", None)
    assert "kd_rule" not in load_done(Path(tmp_path / "runs" / "shapes" / "resnet8" / f"{done['run_id']}.json"))[
        "config"]["recipe"]
    for weights, message in (([1, 2], "teacher_weights has 2 weights; the store has 3 teachers"),
                             ([1, -1, 2], r"teacher_weights=\[1.0, -1.0, 2.0\]: one finite weight >= 0"),
                             ([0, 1, 0], r"teacher_weights gives the chosen teachers \[0, 2\] weight 0")):
        with pytest.raises(MtdError, match=message):
            plan_run(RunRequest(**base, overrides={"teacher_weights": weights}))


def test_the_own_loop_example_trains_on_an_image_store(shapes, capsys):
    _, path = shapes
    out = _example("own_loop").main(["--store", str(path), "--teachers", "0,2", "--epochs", "2"])
    assert out["teachers"] == [0, 2] and 0 <= out["student_test_accuracy"] <= 1
    assert '"student_test_accuracy"' in capsys.readouterr().out


# ----------------------------------------------------------------------------- Hugging Face Trainer


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trainers_kd_loss_is_kd_loss_on_the_same_batch(sst2_store, tmp_path):
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainingArguments

    from mtd_cache.hf import DistillationTrainer

    _, path, student_dir = sst2_store
    store = TeacherStore.open(path)
    train = mtd_cache.TextExamples(store, "train")
    assert len(train) == 64 and set(train[3]) == {"input_ids", "token_type_ids", "attention_mask", "labels", "index"}
    assert "index" not in mtd_cache.TextExamples(store, "dev")[0]
    student = AutoModelForSequenceClassification.from_pretrained(student_dir, num_labels=2).eval()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    targets = mtd_cache.KDTargets(store, [0, 2], temperature=2.0)
    collate = DataCollatorWithPadding(train.tokenizer)
    batch = collate([train[i] for i in (5, 0, 9, 33)])
    for alpha_ce in (0.0, 1.0):
        trainer = DistillationTrainer(model=student, args=args, train_dataset=train, data_collator=collate,
                                      targets=targets, alpha_ce=alpha_ce)
        assert trainer.loss_is_scaled_for_ga  # compute_loss scales for gradient accumulation itself
        loss = trainer.compute_loss(student, dict(batch))  # the student in eval mode: the batch mean
        with torch.no_grad():
            logits = student(**{k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}).logits
        kd = kd_loss(logits, torch.as_tensor(store.mean_logits([0, 2], batch["index"].numpy())), 2.0)
        ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
        assert float(loss.detach()) == pytest.approx(float(kd + alpha_ce * ce), rel=1e-6)
        assert trainer.last_terms["kd"] == pytest.approx(float(kd), rel=1e-6)
    dev_batch = collate([mtd_cache.TextExamples(store, "dev")[i] for i in range(4)])
    dev_loss = trainer.compute_loss(student, dict(dev_batch))  # evaluation batches: no index, CE alone
    assert set(trainer.last_terms) == {"ce"} and float(dev_loss.detach()) == pytest.approx(trainer.last_terms["ce"])


def test_the_trainer_example_runs_a_few_steps(sst2_store, capsys):
    _, path, student_dir = sst2_store
    out = _example("hf_trainer").main(["--store", str(path), "--student", str(student_dir), "--teachers", "0,1,2",
                                       "--max-steps", "3", "--batch-size", "16", "--rule", "mean_probs"])
    assert out["steps"] == 3 and out["rule"] == "mean_probs" and 0 <= out["student_dev_accuracy"] <= 1
    assert len(out["teachers_dev_accuracy"]) == 3
    assert '"student_dev_accuracy"' in capsys.readouterr().out


def test_the_trainer_weighs_a_short_last_micro_batch_by_its_size(sst2_store, tmp_path):
    """14 examples as micro-batches of 4, 4, 4, 2 in one accumulated step: the gradient of the 14 examples' mean
    loss, as one batch of 14 gives it (a mean per micro-batch over 4 steps would weigh the last two 1/8 each)."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainingArguments

    from mtd_cache.hf import DistillationTrainer

    _, path, student_dir = sst2_store
    store = TeacherStore.open(path)
    examples = mtd_cache.TextExamples(store, "train")
    labels = [int(examples[i]["labels"]) for i in range(len(examples))]
    # 12 of one class, then 2 of the other: the short micro-batch pulls the other way, so its weight shows
    order = [i for i, y in enumerate(labels) if y == 0][:12] + [i for i, y in enumerate(labels) if y == 1][:2]
    train = torch.utils.data.Subset(examples, order)
    collate = DataCollatorWithPadding(examples.tokenizer)
    targets = mtd_cache.KDTargets(store, [0, 2], temperature=2.0)
    biases = {}
    for micro, steps in ((4, 4), (14, 1)):
        torch.manual_seed(0)
        student = AutoModelForSequenceClassification.from_pretrained(student_dir, num_labels=2)
        for m in student.modules():  # no dropout: both ways compute the same forward passes
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        before = student.classifier.bias.detach().clone()
        args = TrainingArguments(output_dir=str(tmp_path / str(micro)), report_to=[], use_cpu=True, max_steps=1,
                                 per_device_train_batch_size=micro, gradient_accumulation_steps=steps,
                                 learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
                                 max_grad_norm=0.0, save_strategy="no", logging_strategy="no", seed=0,
                                 dataloader_drop_last=False)
        trainer = DistillationTrainer(model=student, args=args, train_dataset=train, data_collator=collate,
                                      targets=targets)
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(train)
        trainer.train()
        biases[micro] = before - student.classifier.bias.detach()  # lr 1, plain SGD: the gradient
    torch.testing.assert_close(biases[4], biases[14], rtol=1e-4, atol=1e-6)
