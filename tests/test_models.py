"""Your own models: torchvision and Hugging Face names as teachers and students, and the names refused."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from factories import make_bert, reviews_task, teacher_at, write_image_folders

from mtd_cache.core.errors import MtdError
from mtd_cache.core.runtime import seed_everything
from mtd_cache.core.state_losses import hidden_mse
from mtd_cache.models import bert, factory
from mtd_cache.models.families import known
from mtd_cache.store import TeacherStore
from mtd_cache.students.context import StudentContext
from mtd_cache.students.recipes import get_recipe, recipe_name, student_traits, text_kd
from mtd_cache.students.run import RunRequest, plan_run, resolve_settings, run_student
from mtd_cache.students.targets import make_targets
from mtd_cache.sweeps.execute import SweepConfig, make_plan
from mtd_cache.tasks.image_data import ImageData
from mtd_cache.tasks.registry import get_task
from mtd_cache.teachers import dump, find_teachers, train_teachers
from mtd_cache.teachers.dump import run_dump

BIN = Path(sys.executable).parent
CPU = torch.device("cpu")
GREY = SimpleNamespace(kind="image", name="grey", channels=1, num_classes=3, size=16)


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, family, ref, weights", [
    ("resnet20", "resnet", "resnet20", None),
    ("tv:resnet18", "tv", "resnet18", None),
    ("tv:mobilenet_v3_small@IMAGENET1K_V1", "tv", "mobilenet_v3_small", "IMAGENET1K_V1"),
    ("hf:/models/mini", "hf", "/models/mini", None),
    ("bert-base-uncased", "hf", "bert-base-uncased", None),  # a bare name on a text task, as --model always took
])
def test_names_parse_into_family_ref_and_weights(name, family, ref, weights):
    got = factory.parse(name)
    assert (got.family, got.ref, got.weights) == (family, ref, weights)


@pytest.mark.parametrize("name, kind, message", [
    ("resnet18", "image", "unknown image model 'resnet18' (the torchvision model is tv:resnet18); known: the CIFAR "
                          "ResNets"),
    ("tv:resnt18", "image", "unknown torchvision model 'tv:resnt18' (did you mean tv:resnet18"),
    ("tv:resnet18@NOPE", "image", "tv:resnet18@NOPE: unknown weights 'NOPE'; resnet18 has IMAGENET1K_V1, DEFAULT"),
    ("tv:", "image", "model 'tv:': nothing after the prefix"),
    ("hf:bert-base-uncased", "image", f"hf:bert-base-uncased is a text model; this is an image task (its models: "
                                      f"{known('image')})"),
    ("tv:resnet18", "text", "tv:resnet18 is an image model; this is a text task"),
    ("resnet20", "text", "resnet20 is an image model; this is a text task"),
])
def test_bad_names_are_one_line_naming_the_known_families(name, kind, message):
    task = SimpleNamespace(kind=kind, name="t", channels=3, num_classes=2, num_labels=2, size=16, label_names=None)
    with pytest.raises(MtdError) as err:
        factory.build(name, task)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_student_names_choose_their_recipe_by_family():
    assert [recipe_name(n) for n in ("resnet20", "resnet1202", "tv:resnet18", "hf:x", "distilbert", "tinybert")] == \
        ["image_kd", "image_kd", "image_kd", "text_kd", "distilbert", "tinybert"]
    with pytest.raises(MtdError, match=r"unknown student 'resnet18' \(the torchvision model is tv:resnet18\); known: "
                                       r"distilbert and tinybert \(the paper's recipes\), the CIFAR ResNets .*"
                                       r"hf:NAME_OR_PATH .*tv:NAME\[@WEIGHTS\]"):
        recipe_name("resnet18")
    with pytest.raises(MtdError, match=r"unknown torchvision model 'tv:mobilenet' \(did you mean tv:mobilenet_v2, "
                                       r".*\); tv: takes the \d+ classification models of "
                                       r"torchvision.models.list_models\(\)$"):
        recipe_name("tv:mobilenet")


def test_slugs_are_one_safe_path_component():
    assert factory.slug("resnet20") == "resnet20" and factory.slug("distilbert") == "distilbert"
    assert factory.slug("tv:resnet18@DEFAULT").startswith("tv_resnet18@DEFAULT_")
    long = factory.slug("hf:/home/someone/models/checkpoints/minilm-3-layers/final-after-all-the-epochs")
    assert "/" not in long and ":" not in long and long.startswith("hf_final-after-all-the-epochs_")
    assert factory.slug("hf:/a/b") != factory.slug("hf:/a_b")  # the hash keeps apart what the text merges


# ----------------------------------------------------------------------------- torchvision


def test_a_torchvision_model_is_sized_to_the_task():
    torch.manual_seed(0)
    net = factory.build("tv:mobilenet_v3_small", GREY)
    # torchvision's 2,542,856 parameters, its 1024 x 1000 classifier (1,025,000) swapped for 1024 x 3 + 3
    assert sum(p.numel() for p in net.parameters()) == 2_542_856 - 1_025_000 + 3 * 1024 + 3
    net.train()
    assert net(torch.randn(4, 1, 16, 16)).shape == (4, 3)  # greyscale repeated to three channels
    with pytest.raises(MtdError, match=r"tv:vit_b_16 does not run on 16 x 16 images: .*224.*give the task a larger "
                                       r"image_size"):
        factory.build("tv:vit_b_16", GREY)
    with pytest.raises(MtdError, match="tv:resnet18 takes 1- or 3-channel images, not 4"):
        factory.build("tv:resnet18", SimpleNamespace(**{**vars(GREY), "channels": 4}))


def _fake_weights(monkeypatch, fail: Exception | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """torchvision's weight download replaced: seeded 1000-class weights of the model asked for (or ``fail``)."""
    import torchvision.models as tvm
    from torchvision.models._api import WeightsEnum

    served = {}

    def get_state_dict(self, *args, **kwargs):
        if fail is not None:
            raise fail
        name = self.url.rsplit("/", 1)[-1].split("-")[0]
        torch.manual_seed(1)
        served[name] = tvm.get_model(name, weights=None).state_dict()
        return served[name]

    monkeypatch.setattr(WeightsEnum, "get_state_dict", get_state_dict)
    return served


@pytest.mark.parametrize("name, head", [("resnet18", "net.fc"), ("squeezenet1_1", "net.classifier.1")])
def test_pretrained_weights_are_kept_and_the_classifier_resized(monkeypatch, name, head):
    served = _fake_weights(monkeypatch)
    net = factory.build(f"tv:{name}@DEFAULT", SimpleNamespace(**{**vars(GREY), "size": 64}))
    got = net.state_dict()
    heads = {k for k in got if k.startswith(head + ".")}
    assert heads and all(got[k].shape[0] == 3 for k in heads)  # 3 classes, not ImageNet's 1000
    kept = {k: v for k, v in served[name].items() if "net." + k not in heads}
    assert len(kept) == len(got) - len(heads)
    assert all(torch.equal(got["net." + k], v) for k, v in kept.items())  # everything else is the weights'


def test_a_finished_pretrained_teacher_loads_without_its_download(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    _fake_weights(monkeypatch)
    net = factory.build("tv:resnet18@DEFAULT", GREY)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    _fake_weights(monkeypatch, urllib.error.URLError("offline"))  # a download now fails
    info = {"model": "tv:resnet18@DEFAULT", "in_channels": 1, "num_classes": 3, "image_size": 16}
    again = factory.load_trained(tmp_path, info, 3)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x), rtol=0, atol=0)


def test_weights_that_cannot_be_fetched_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _fake_weights(monkeypatch, urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(MtdError) as err:
        factory.build("tv:resnet18@DEFAULT", GREY)
    assert str(err.value) == (
        "could not load the weights DEFAULT of tv:resnet18@DEFAULT (https://download.pytorch.org/models/resnet18-"
        "f37072fd.pth): <urlopen error [Errno -3] Temporary failure in name resolution>; offline, put the file in "
        f"{tmp_path}/hub/checkpoints")


@pytest.fixture(scope="module")
def shapes_tv(tmp_path_factory):
    """Two tv:mobilenet_v3_small teachers on a 3-class image folder task (16 px), and their store."""
    root = tmp_path_factory.mktemp("shapes_tv")
    path = write_image_folders(root / "data", size=16)
    text = json.loads(path.read_text())
    path.write_text(json.dumps({**text, "image_size": 16}))
    train_teachers(str(path), [0, 1], root / "teachers", "tv:mobilenet_v3_small", None,
                   {"epochs": 2, "batch_size": 24, "lr": 0.05}, device="cpu", force=True)  # tiny: may be at chance
    store = run_dump(str(path), root / "teachers", root / "s.h5", [], {})
    return root, path, store


def test_torchvision_teachers_dump_their_own_outputs(shapes_tv):
    root, path, store = shapes_tv
    teachers = find_teachers(root / "teachers")
    assert teachers[1].info["model"] == "tv:mobilenet_v3_small" and teachers[1].info["image_size"] == 16
    model = factory.load_trained(teachers[1].path, teachers[1].info, 3)
    test = ImageData.load(get_task(str(path)), "test", None, CPU)
    with torch.no_grad(), TeacherStore.open(store) as s:
        direct = model(test.batch(torch.arange(24), torch.as_tensor(s.views)[[4] * 24]))
        np.testing.assert_allclose(s.dev_logits[:, 1], direct.numpy(), rtol=1e-5, atol=1e-5)
        assert s.logits.shape == (72, 9, 2, 3)


@pytest.mark.parametrize("student", ["tv:mobilenet_v3_small", "resnet8"])
def test_students_of_either_family_train_on_torchvision_teachers(shapes_tv, tmp_path, student):
    _, _, store = shapes_tv
    rec = run_student(RunRequest(store=str(store), student=student, teachers=(0, 1), out=str(tmp_path / "runs"),
                                 device="cpu", overrides={"epochs": 1, "batch_size": 24}))
    assert rec["status"] == "done" and rec["student"] == student and 0 <= rec["metric"] <= 1
    record = tmp_path / "runs" / "shapes" / factory.slug(student) / f"{rec['run_id']}.json"
    assert json.loads(record.read_text())["run_id"] == rec["run_id"]
    assert len(np.load(record.parent / rec["predictions"])["pred"]) == 24


@pytest.mark.slow
def test_a_torchvision_student_through_the_cli_and_refused_names(shapes_tv, tmp_path):
    _, _, store = shapes_tv
    ok = subprocess.run([str(BIN / "mtd-train"), "--store", str(store), "--student", "tv:resnet18", "--teachers",
                         "0,1", "--epochs", "1", "--out", str(tmp_path / "runs"), "--device", "cpu"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["student"] == "tv:resnet18"
    for bad, message in (("tv:resnt18", "unknown torchvision model 'tv:resnt18'"),
                         ("hf:x", f"hf:x is a text student; {{store}} holds an image task (its students: "
                                  f"{known('image')})"),
                         ("distilbert", "distilbert is a text student; {store} holds an image task"),
                         ("resnet18", "unknown student 'resnet18' (the torchvision model is tv:resnet18)")):
        r = subprocess.run([str(BIN / "mtd-train"), "--store", str(store), "--student", bad, "--teachers", "0,1",
                            "--out", str(tmp_path / "bad")], capture_output=True, text=True)
        message = message.format(store=store)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- Hugging Face students


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """A 3-class JSONL task file, two tiny 2-layer BERT teachers (width 32) and their store (primary 0)."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("reviews")
    path = reviews_task(root, "jsonl")
    texts = ["the film it was bad fine great a b c ,"]
    teachers = []
    for s in (0, 1):
        folder = make_bert(root / f"t{s}", texts, seed=s)
        BertForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True) \
            .save_pretrained(folder)
        teachers.append(teacher_at(folder, s, "reviews"))
    store = dump.dump_teachers(str(path), teachers, root / "s.h5", [0], {"max_length": 32}, "cpu")
    student = make_bert(root / "student", texts, layers=3, hidden=16, seed=7)  # deeper, narrower, same tokenizer
    return root, store, teachers, student


def _ctx(store, student, teachers=(0, 1), primary=0, online=None, **overrides) -> StudentContext:
    s = TeacherStore.open(store)
    r = resolve_settings(text_kd, s, {"batch_size": 8, "prefetch": 0, **overrides})
    return StudentContext(f"hf:{student}", r.settings, r.requested, s, tuple(teachers), primary, 0, CPU,
                          online=online)


def test_the_hidden_loss_through_the_projection_is_the_same_from_the_store_and_online(reviews):
    root, store, teachers, student = reviews
    jobs = []
    for online in (None, teachers):
        seed_everything(0)
        ctx = _ctx(store, student, online=online, alpha_hidden=1.0)
        jobs.append((job := text_kd.build(ctx), ctx))
        job.model.eval()
    (cached, ctx_c), (online, ctx_o) = jobs
    assert ctx_c.extra["hidden_projection"] == [16, 32] and ctx_c.extra["loss_terms"] == ["ce", "kd", "hidden"]
    assert ctx_c.extra["init_layers"] is None and ctx_c.extra["init_depth"] == 3
    batch = next(iter(cached.batches(0)))
    with torch.no_grad():
        a, b = cached.step(dict(batch)), online.step(dict(batch))
        # by hand: W h_S of the student's last layer against the stored primary's last layer, valid tokens only
        net, proj = cached.model.net, cached.model.projection
        h = net(**bert.model_inputs(net, batch), output_hidden_states=True).hidden_states[-1]
        stored = make_targets(ctx_c, kd=False, hidden_layers=(-1,))
        primary = stored(stored.read(batch["index"].numpy()), batch, batch["input_ids"].shape[1]).hidden[:, 0]
        want = hidden_mse(proj(h), primary, batch["attention_mask"])
    assert primary.shape == (len(batch["index"]), batch["input_ids"].shape[1], 32)
    assert float(a["hidden"]) == pytest.approx(float(want), rel=1e-6)
    assert float(a["hidden"]) == pytest.approx(float(b["hidden"]), rel=2e-3)  # fp16 storage
    assert float(a["kd"]) == pytest.approx(float(b["kd"]), abs=1e-5) and float(a["ce"]) == float(b["ce"])


def test_an_hf_student_of_another_depth_trains_and_records_what_it_is(reviews, tmp_path):
    root, store, teachers, student = reviews
    rec = run_student(RunRequest(store=str(store), student=f"hf:{student}", teachers=(0, 1),
                                 out=str(tmp_path / "runs"), device="cpu",
                                 overrides={"epochs": 1, "student_layers": 2, "batch_size": 8}))
    assert rec["status"] == "done" and rec["task"] == "reviews" and rec["primary"] is None
    assert (rec["init_layers"], rec["init_depth"], rec["loss_terms"]) == ([0, 2], 3, ["ce", "kd"])
    assert rec["hidden_loss"] is None and rec["config"]["recipe"]["student_layers"] == 2
    with_hidden = run_student(RunRequest(store=str(store), student=f"hf:{student}", teachers=(0, 1), primary=0,
                                         out=str(tmp_path / "runs"), device="cpu",
                                         overrides={"epochs": 1, "alpha_hidden": 0.5, "batch_size": 8}))
    assert with_hidden["run_id"] != rec["run_id"] and with_hidden["hidden_projection"] == [16, 32]
    assert with_hidden["loss_terms"] == ["ce", "kd", "hidden"] and with_hidden["hidden_loss"] == "mse"
    with pytest.raises(MtdError, match=r"s.h5 holds no states of primary teacher 1 \(it has: 0\)"):
        run_student(RunRequest(store=str(store), student=f"hf:{student}", teachers=(0, 1), primary=1,
                               out=str(tmp_path / "runs"), device="cpu", overrides={"alpha_hidden": 0.5}))


def test_hf_students_are_refused_for_what_cannot_work(reviews, tmp_path, monkeypatch):
    root, store, teachers, student = reviews
    req = dict(store=str(store), student=f"hf:{student}", out=str(tmp_path / "runs"), device="cpu",
               overrides={"epochs": 1})
    with pytest.raises(MtdError, match="--primary 0 given, but this student takes no primary teacher"):
        plan_run(RunRequest(teachers=(0, 1), primary=0, **req))
    with pytest.raises(MtdError, match="--primary is required for this student"):
        plan_run(RunRequest(teachers=(0, 1), **{**req, "overrides": {"alpha_hidden": 1.0}}))
    other = make_bert(tmp_path / "other", ["the film it was bad fine great a b c , zzz"], layers=1)
    with pytest.raises(MtdError, match=rf"tokenizer mismatch: the student hf:{other} tokenises with its own "
                                       r"tokenizer \(sha256 \w{12}\), the store's inputs with"):
        text_kd.build(_ctx(store, other))
    with pytest.raises(MtdError, match=r"student_layers 4: hf:.* has only 3 layers"):
        text_kd.build(_ctx(store, student, student_layers=4))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the same line on any machine, online or not
    with pytest.raises(MtdError, match=r"the model '.*missing': not a local folder, not in the Hugging Face cache, "
                                       r"and the Hub cannot be reached \(HF_HUB_OFFLINE is set\): give a local "
                                       r"folder: --student hf:PATH"):
        text_kd.build(_ctx(store, tmp_path / "missing"))


def test_a_local_student_checkpoint_is_part_of_the_run_id(reviews, tmp_path):
    root, store, teachers, student = reviews
    folder = tmp_path / "mine"
    make_bert(folder, ["the film it was bad fine great a b c ,"], seed=1)
    req = RunRequest(store=str(store), student=f"hf:{folder}", teachers=(0, 1), out=str(tmp_path / "runs"))
    first = plan_run(req).run_id
    assert plan_run(req).run_id == first
    make_bert(folder, ["the film it was bad fine great a b c ,"], seed=2)  # retrained in place
    assert plan_run(req).run_id != first
    assert plan_run(RunRequest(**{**vars(req), "student": "hf:some/hub-name"})).identity.get("student_sha256") is None


def test_sweeps_vary_the_primary_only_when_an_hf_student_reads_its_states():
    cfg = SweepConfig(stores=("s.h5",), student="hf:x", pool=(0, 1, 2), repeats=1)
    assert student_traits("hf:x") == (False, False) and student_traits("hf:x", {"alpha_hidden": 1}) == (True, False)
    plain = make_plan(cfg)
    hidden = make_plan(SweepConfig(**{**vars(cfg), "overrides": {"alpha_hidden": 1.0}}))
    assert len(plain) == 7 + 1 and all(j.primary is None for j in plain)  # every subset of 3, and the baseline
    assert len(hidden) == 3 * 1 + 2 * 3 + 1 * 3 + 1  # sum_k k C(3, k) (every member primary once), and the baseline
    assert get_recipe("hf:x") is text_kd
