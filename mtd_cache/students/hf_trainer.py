"""Hugging Face ``Trainer`` with the store's targets: CE + KD^k, for researchers who already train with ``Trainer``.

    from mtd_cache import KDTargets, TeacherStore
    from mtd_cache.hf import DistillationTrainer

    trainer = DistillationTrainer(model=student, args=args, train_dataset=train, data_collator=collator,
                                  targets=KDTargets(store, [0, 2, 5], temperature=2.0), alpha_kd=1.0)

The training dataset carries the store row of each example in an ``index`` column (``view`` too, on an image
store): row i of the store is example i of the task's training split, as ``mtd_cache.TextExamples`` gives
them. Batches without an ``index`` (evaluation) get the plain cross-entropy. Needs ``accelerate``
(``pip install 'mtd-cache[hf]'``), as ``TrainingArguments`` does.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from ..tasks.lm_data import next_token_pairs
from .objective import Objective, StudentOut
from .targets import KDTargets, TeacherOutputs


class DistillationTrainer(Trainer):
    """``Trainer`` whose loss is ``alpha_ce * CE(z_S, y) + alpha_kd * KD^k(z_S, targets[index])``."""

    def __init__(self, *args: Any, targets: KDTargets, alpha_ce: float = 1.0, alpha_kd: float = 1.0,
                 index_column: str = "index", view_column: str = "view", **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Under gradient accumulation the loss of a micro-batch is its sum over examples divided by the examples of
        # the whole accumulated step, so a short last micro-batch weighs by its size (14 examples as 4+4+4+2: each
        # 1/14, not 1/8 for the last two). Trainer counts them (``num_items_in_batch``) only for a model that
        # "accepts loss kwargs"; our ``compute_loss`` does the scaling, so Trainer must not divide again.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self.targets, self.alpha_ce, self.alpha_kd = targets, float(alpha_ce), float(alpha_kd)
        # the student runs' objective (``students.objective``): CE and the targets' KD^k; CE alone on evaluation
        self._objectives = {True: Objective({"ce": self.alpha_ce, "kd": self.alpha_kd}, targets, teachers=True),
                            False: Objective({"ce": 1.0}, targets, teachers=False)}
        self._unlabelled = Objective({"kd": self.alpha_kd}, targets, teachers=True)  # no labels: KD alone
        self.index_column, self.view_column = index_column, view_column
        self.last_terms: dict[str, float] = {}  # the latest batch's loss terms, for inspection

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # keep the index (and view) columns of a datasets.Dataset
        self._signature_columns = [*self._signature_columns, self.index_column, self.view_column]

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        index = inputs.pop(self.index_column, None)
        view = inputs.pop(self.view_column, None)
        labels = inputs.pop("labels", None)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        objective = self._objectives[index is not None] if labels is not None else self._unlabelled
        teacher = TeacherOutputs(logits=self.targets.logits(index, view).to(logits.device)) \
            if "kd" in objective.names and index is not None else None
        terms = objective(StudentOut(logits=logits, labels=labels), teacher)
        loss = terms.pop("loss")
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        if model.training:  # evaluation reports the batch mean
            loss = self._scaled_for_accumulation(loss, len(logits), num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _scaled_for_accumulation(self, mean: torch.Tensor, batch: int, num_items: Any) -> torch.Tensor:
        """The micro-batch's share of the accumulated step's mean loss: its sum over examples over the step's
        examples (and Trainer's multi-device factor, as its own ``compute_loss`` applies it); without a count,
        the mean over the accumulation steps, as Trainer does for a model that takes no loss kwargs."""
        if num_items is None:
            return mean / self.current_gradient_accumulation_steps
        loss = mean * batch / num_items
        if self.args.average_tokens_across_devices:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return loss


class CausalLMDistillationTrainer(Trainer):
    """``Trainer`` for a causal LM student whose loss is ``alpha_ce * CE(next token) + alpha_kd * KD^k`` against a
    token store's targets (``KDTargets`` on a token store: ``students.lm_targets.TokenTargets``), on every
    predicted position of the batch. Training examples are the store's sequences by ``index``
    (``train_dataset=targets.dataset(), data_collator=targets.collate``); batches without an ``index`` (an
    evaluation set) get the cross-entropy alone, so ``exp(eval_loss)`` is their perplexity (over batches)."""

    def __init__(self, *args: Any, targets: Any, alpha_ce: float = 0.5, alpha_kd: float = 0.5,
                 index_column: str = "index", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # a mean per micro-batch: Trainer divides by the accumulation steps
        self.targets, self.alpha_ce, self.alpha_kd = targets, float(alpha_ce), float(alpha_kd)
        self.index_column = index_column
        self.last_terms: dict[str, float] = {}

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, self.index_column]

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        index = inputs.pop(self.index_column, None)
        labels = inputs.pop("labels", None)
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = (labels != -100) if mask is None and labels is not None else \
            torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        outputs = model(input_ids=ids, attention_mask=mask.long())
        flat, gold = next_token_pairs(outputs.logits, ids, mask)
        ce = torch.nn.functional.cross_entropy(flat.float(), gold)
        terms = {"ce": ce}
        loss = ce if index is None else self.alpha_ce * ce
        if index is not None and self.alpha_kd:
            terms["kd"] = self.targets.loss(flat, index.tolist())
            loss = loss + self.alpha_kd * terms["kd"]
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return (loss, outputs) if return_outputs else loss
