"""Checkpoints hold no code: a pickle planted at any checkpoint path a command reads is never run; a checkpoint
the tool did not write is a resume point discarded in one line; a full disk while checkpointing is exit 3."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import Result, run_cli
from factories import mounted

from mtd_cache.core.checkpoints import NotACheckpoint, load_state, save_state
from mtd_cache.students.run import RunRequest, plan_run

BIN = Path(sys.executable).parent
TINYBERT = {"init_from_teacher": True, "student_layers": 2, "batch_size": 8, "prefetch": 0, "ild_epochs": 1,
            "epochs": 1, "eval_batch_size": 16}


class _Planted:
    """A pickle that, unpickled, writes ``marker``: what a shared runs or teachers folder could hold."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Planted(marker)))
    pickle.loads(pickle.dumps(_Planted(marker.with_suffix(".probe"))))  # the bait is live: unpickled, it runs
    assert marker.with_suffix(".probe").exists()


def _run(*args) -> Result:
    return run_cli(*args)  # in this process: the outcome is what matters here


def test_a_planted_pickle_at_a_students_checkpoint_is_never_run(tiny, tmp_path):
    out, marker = tmp_path / "runs", tmp_path / "ran.txt"
    planned = plan_run(RunRequest(store=str(tiny["image"]), student="resnet8", teachers=(0, 1), out=str(out),
                                  overrides={"epochs": 1}, device="cpu"))
    for path in (planned.checkpoint, planned.record.with_suffix(".ckpt.pt")):  # today's name and the old one
        _plant(path, marker)
    r = _run(BIN / "mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0,1", "--epochs", "1",
             "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert f"{planned.checkpoint} is not a checkpoint mtd-cache wrote (" in r.stderr
    assert "): ignored, resnet8 k=2 starts from the beginning" in r.stderr
    assert json.loads(planned.record.read_text())["status"] == "done" and not planned.checkpoint.exists()


def test_a_planted_pickle_at_a_teachers_checkpoint_is_never_run(tmp_path):
    marker = tmp_path / "ran.txt"
    for name in ("checkpoint.safetensors", "checkpoint.pt"):
        _plant(tmp_path / "t" / "seed0" / name, marker)
    r = _run(BIN / "mtd-cache", "teachers", "--task", "digits", "--model", "resnet8", "--seeds", "0", "--epochs", "1",
             "--train-subset", "40", "--out", tmp_path / "t", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert not marker.exists() and "is not a checkpoint mtd-cache wrote" in r.stderr
    assert (tmp_path / "t" / "seed0" / "teacher.json").exists()


def test_a_planted_pickle_at_a_stage_1_checkpoint_is_never_run(tiny, tmp_path):
    out, marker = tmp_path / "runs", tmp_path / "ran.txt"
    req = RunRequest(store=str(tiny["text"]), student="tinybert", teachers=(0, 1), primary=0, out=str(out),
                     overrides=TINYBERT, device="cpu")
    stage1 = plan_run(RunRequest(**{**vars(req), "kind": "stage1", "teachers": (0,)}))
    student = plan_run(req)
    for path in (stage1.checkpoint, stage1.checkpoint.with_name("checkpoint.pt"), student.checkpoint):
        _plant(path, marker)
    sets = [x for k, v in TINYBERT.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    r = _run(BIN / "mtd-train", "--store", tiny["text"], "--student", "tinybert", "--teachers", "0,1", "--primary",
             "0", "--device", "cpu", "--out", out, *sets)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert f"{stage1.checkpoint} is not a checkpoint mtd-cache wrote" in r.stderr
    assert (stage1.record.parent / "stage1.json").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all\n", bytes(np.random.default_rng(0).integers(
    0, 256, 4096, dtype=np.uint8)), b""], ids=["text", "random-bytes", "empty"])
def test_a_corrupt_checkpoint_is_a_resume_point_discarded_in_one_line(tiny, tmp_path, content):
    out = tmp_path / "runs"
    planned = plan_run(RunRequest(store=str(tiny["image"]), student="resnet8", teachers=(0,), out=str(out),
                                  overrides={"epochs": 1}, device="cpu"))
    planned.checkpoint.parent.mkdir(parents=True)
    planned.checkpoint.write_bytes(content)
    r = _run(BIN / "mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0", "--epochs", "1",
             "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "ignored" in line]
    assert len(warned) == 1 and f"{planned.checkpoint} is not a checkpoint mtd-cache wrote" in warned[0]


def test_a_checkpoint_of_this_run_that_does_not_fit_it_is_one_line_exit_2(tiny, tmp_path):
    out = tmp_path / "runs"
    planned = plan_run(RunRequest(store=str(tiny["image"]), student="resnet8", teachers=(0,), out=str(out),
                                  overrides={"epochs": 2}, device="cpu"))
    from mtd_cache.core.hashing import canonical_json

    save_state(planned.checkpoint, {"identity": canonical_json({"run_id": planned.run_id}), "epoch": 1,
                                    "history": [], "model": {"w": torch.zeros(2)}, "threads": torch.get_num_threads()})
    r = _run(BIN / "mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0", "--epochs", "2",
             "--device", "cpu", "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"mtd-train: error: {planned.checkpoint} names this run but "
                                                        "does not fit it (")


def test_the_state_round_trips_without_pickle(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2, 3])
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "history": [{"loss": float("nan"), "$odd": 1}], "tied": (net.weight, net.weight)}
    save_state(tmp_path / "c.safetensors", state)
    got = load_state(tmp_path / "c.safetensors")
    assert got["rng"]["python"] == random.getstate() and got["rng"]["numpy"][0] == "MT19937"
    assert np.array_equal(got["rng"]["numpy"][1], np.random.get_state()[1])
    assert torch.equal(got["rng"]["torch"], torch.get_rng_state())
    assert got["scheduler"]["milestones"] == Counter({2: 1, 3: 1})
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert np.isnan(got["history"][0]["loss"]) and got["history"][0]["$odd"] == 1
    assert torch.equal(got["tied"][0], net.weight.detach()) and torch.equal(got["tied"][1], net.weight.detach())
    with pytest.raises(TypeError, match="checkpoint state at /x: object has no safe encoding"):
        save_state(tmp_path / "d.safetensors", {"x": object()})
    assert not (tmp_path / "d.safetensors").exists()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotACheckpoint, match="fifo is not a regular file"):
        load_state(tmp_path / "fifo")


def test_a_full_disk_while_checkpointing_is_exit_3_and_the_run_resumes(tiny, tmp_path):
    with mounted(tmp_path / "runs", "-o", "size=1000k") as runs:
        args = [BIN / "mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0,1", "--epochs",
                "3", "--device", "cpu", "--out", runs, "--no-save-model"]
        r = _run(*args)
        assert r.returncode == 3, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert "Traceback" not in r.stderr and "No space left on device" in line and "run" in line, r.stderr
        kept = list(runs.rglob("*.ckpt.safetensors"))
        assert len(kept) == 1 and load_state(kept[0])["epoch"] >= 1  # the work done so far is kept
        subprocess.run(["mount", "-o", "remount,size=8m", str(runs)], check=True)
        again = _run(*args)
        assert again.returncode == 0, again.stderr
        assert "resumed from" in again.stderr


def test_weights_that_are_not_safetensors_are_one_line(tiny, tmp_path):
    import shutil

    out = tmp_path / "runs"
    r = _run(BIN / "mtd-train", "--store", tiny["image"], "--student", "resnet8", "--teachers", "0", "--epochs", "1",
             "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    model = next(out.rglob("*.model.safetensors"))
    model.write_bytes(pickle.dumps(_Planted(tmp_path / "ran.txt")))
    r = _run(BIN / "mtd-train", "--evaluate", model.name.split(".")[0], "--out", out, "--device", "cpu")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        f"mtd-train: error: {model}: not weights this model can load (")
    teachers = tmp_path / "teachers"
    shutil.copytree(tiny["teachers"], teachers)
    (teachers / "seed1" / "model.safetensors").write_bytes(b"\0" * 100)
    r = _run(BIN / "mtd-cache", "dump", "--task", "digits", "--teachers-dir", teachers, "--out", tmp_path / "s.h5",
             "--train-subset", "40", "--test-subset", "20")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        f"mtd-cache: error: {teachers / 'seed1' / 'model.safetensors'}: not weights this model can load (")
    assert not (tmp_path / "ran.txt").exists()


def test_a_planted_cifar_batch_is_refused_not_run(tmp_path):
    from mtd_cache.core.errors import MtdError
    from mtd_cache.tasks.cifar import write_fake_cifar10
    from mtd_cache.tasks.images import load_split

    folder = write_fake_cifar10(tmp_path, n_train=10, n_test=4)
    marker = tmp_path / "ran.txt"
    (folder / "data_batch_2").write_bytes(pickle.dumps(_Planted(marker), protocol=2))
    with pytest.raises(MtdError, match=r"CIFAR-10 files in .* are unreadable: data_batch_2: it refers to "
                                       r"__builtin__.exec, which a CIFAR batch never holds \(refused\)"):
        load_split("cifar10", "train", data_dir=tmp_path, download=False)
    assert not marker.exists()
    assert load_split("cifar10", "test", data_dir=tmp_path, download=False)[0].shape == (4, 3, 32, 32)
