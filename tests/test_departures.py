"""The reference behaviours the departures tables name, where they can be reproduced: dropout-on teachers
(online only) and BertAdam's per-parameter gradient clipping."""

from __future__ import annotations

import json

import pytest
import torch
from factories import teacher_at

from mtd_cache.core.errors import MtdError
from mtd_cache.core.fit import Fit, fit
from mtd_cache.store import TeacherStore
from mtd_cache.students.context import StudentContext
from mtd_cache.students.recipes import text_kd
from mtd_cache.students.run import RunRequest, plan_run, resolve_settings
from mtd_cache.students.targets import load_teacher_model, online_teachers


def test_teacher_dropout_is_online_only_and_draws_anew_each_pass(sst2_store, tmp_path):
    root, path, student = sst2_store
    req = dict(store=str(path), student=f"hf:{student}", teachers=(0, 1), out=str(tmp_path / "runs"),
               overrides={"teacher_dropout": True})
    with pytest.raises(MtdError, match="teacher_dropout=true needs --online: a store holds each teacher's one "
                                       "deterministic output"):
        plan_run(RunRequest(**req))
    store = TeacherStore.open(path)
    for s in (0, 1, 2):  # what `mtd-cache teachers` writes beside each teacher's weights
        (root / f"seed{s}" / "teacher.json").write_text(json.dumps(teacher_at(root / f"seed{s}", s, "sst-2").info))
    teachers = online_teachers(store, str(root))
    x = {"input_ids": torch.tensor([[2, 7, 8, 9, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
         "token_type_ids": torch.zeros(1, 5, dtype=torch.long)}
    outs = {}
    for dropout in (False, True):
        r = resolve_settings(text_kd, store, {"teacher_dropout": dropout})
        ctx = StudentContext(f"hf:{student}", r.settings, r.requested, store, (0, 1), None, 0, torch.device("cpu"),
                             online=teachers)
        model = load_teacher_model(ctx, 0)
        torch.manual_seed(0)
        with torch.no_grad():
            outs[dropout] = [model(**x).logits for _ in range(2)]
        assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(outs[False][0], outs[False][1])  # eval: deterministic, as the store holds
    assert not torch.equal(outs[True][0], outs[True][1])  # the reference's teachers: a new draw every pass
    planned = plan_run(RunRequest(**req, online=True, teachers_dir=str(root)))
    assert planned.identity["recipe"]["teacher_dropout"] and planned.identity["teacher_dropout_version"] == 2


def test_dropout_on_teachers_draw_their_attention_dropout_anew_each_pass(tmp_path):
    """TinyBERT's reference leaves its teacher in train mode: BERT's attention dropout (decided by the attention
    module's own flag, not an nn.Dropout's) draws anew every pass too; a BatchNorm layer keeps its statistics."""
    from transformers import BertConfig, BertForSequenceClassification

    from mtd_cache.students.targets import teacher_mode

    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5, attn_implementation="eager")
    x = {"input_ids": torch.tensor([[2, 7, 8, 9, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    probs = {}
    for dropout in (False, True):
        model = teacher_mode(BertForSequenceClassification(cfg), dropout)
        with torch.no_grad():
            probs[dropout] = [model(**x, output_attentions=True).attentions[0] for _ in range(2)]
    assert torch.equal(*probs[False])
    assert not torch.equal(*probs[True])  # before: only nn.Dropout modules in train mode, these were equal
    net = teacher_mode(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.Dropout()), True)
    assert [m.training for m in net] == [True, False, True]


def test_per_parameter_clipping_clips_each_gradient_on_its_own():
    for per_parameter, want in ((False, [0.6, 0.8]), (True, [1.0, 1.0])):
        a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        model = torch.nn.ParameterList([a, b])
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        def step(_, a=a, b=b):  # gradients 3 and 4: norm 5
            return {"loss": 3.0 * a.sum() + 4.0 * b.sum()}
        fit(Fit(model=model, optimizer=opt, epochs=1, batches=lambda e: [None], step=step, grad_clip=1.0,
                clip_per_parameter=per_parameter), torch.device("cpu"))
        # one global norm scales (3, 4) to (0.6, 0.8); each on its own clips both to 1
        assert [-float(a.detach()), -float(b.detach())] == pytest.approx(want)
