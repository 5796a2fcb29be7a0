"""Causal language models for language-modelling tasks: teachers and students named ``hf:NAME_OR_PATH``.

``NAME_OR_PATH`` is a Hub name, a local folder, or a ``.gguf`` file (llama.cpp's format, dequantised by
transformers with the ``gguf`` package: ``from_pretrained(folder, gguf_file=...)``). A local folder that holds a
``config.json`` and no weights is a *random config*: the model is initialised from it with the run's seed and
trained from scratch (tiny teachers and students offline). Weights are read from safetensors only, never a pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import MtdError
from .hub import LOCAL_HINT, pretrained, quiet_transformers

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def ref_of(name: str) -> str:
    """What ``from_pretrained`` takes: ``hf:`` (teachers) or ``lm:`` (students) stripped."""
    name = str(name)
    ref = name[3:] if name.startswith(("hf:", "lm:")) else name
    if not ref:
        raise MtdError(f"model {name!r}: nothing after hf:")
    if name.startswith(("tv:",)) or ref.startswith("resnet"):
        raise MtdError(f"{name} is an image model; a language-modelling task takes hf:NAME_OR_PATH (a causal LM)")
    return ref


def _gguf(ref: str) -> tuple[str, dict[str, str]]:
    path = Path(ref)
    return (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (ref, {})


def is_random_config(ref: str) -> bool:
    """A local folder with a config.json and no weight file: the model starts from a random initialisation."""
    folder = Path(ref)
    return folder.is_dir() and (folder / "config.json").is_file() and \
        not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def load_tokenizer(name: str, hint: str = LOCAL_HINT) -> Any:
    from transformers import AutoTokenizer

    where, extra = _gguf(ref_of(name))
    with quiet_transformers():
        return pretrained(AutoTokenizer.from_pretrained, where, "the tokenizer", hint, **extra)


def build(name: str, seed: int, hint: str = LOCAL_HINT) -> tuple[torch.nn.Module, str]:
    """A causal LM to train and how it starts ("random config" or "pretrained"): a random config initialised
    under ``seed``, else the checkpoint's weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ref = ref_of(name)
    if is_random_config(ref):
        config = pretrained(AutoConfig.from_pretrained, ref, "the config of", hint)
        torch.manual_seed(seed)
        with quiet_transformers():
            try:
                return AutoModelForCausalLM.from_config(config), "random config"
            except ValueError as exc:
                raise MtdError(f"{ref}/config.json is not a causal language model's config "
                               f"({' '.join(str(exc).split())[:120]})") from None
    return load(name, hint), "pretrained"


def load(name_or_folder: str | Path, hint: str = LOCAL_HINT) -> torch.nn.Module:
    """A causal LM's weights (a finished teacher's folder, a Hub name, a GGUF file), on the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM

    where, extra = _gguf(ref_of(str(name_or_folder)))
    if not extra and (Path(where) / "model.safetensors").is_file():
        extra = {"use_safetensors": True}  # a local folder: never a pickled .bin beside it
    with quiet_transformers():
        model = pretrained(AutoModelForCausalLM.from_pretrained, where, "the language model", hint, **extra)
    if "gguf_file" in extra:  # dequantised on loading: plain float weights, saved (safetensors) as any model's
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise MtdError(f"{name_or_folder} is not a causal language model (no output embeddings)")
    return model.eval()


def check_fits(model: torch.nn.Module, block_size: int, name: str) -> None:
    """A model that can read sequences of ``block_size`` tokens and predicts each from the ones before it alone:
    one line otherwise (a block longer than its positions, an encoder whose logits see the future)."""
    c = model.config
    most = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
    if most is not None and block_size > int(most):
        raise MtdError(f"block_size {block_size} is longer than {name}'s {most} positions: lower the task's "
                       "block_size, or give a model with more positions")
    g = torch.Generator().manual_seed(0)
    vocab = vocab_size(model)
    ids = torch.randint(0, vocab, (1, 4), generator=g)
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % vocab
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            a = model(input_ids=ids.to(device)).logits[0, :-1]
            b = model(input_ids=other.to(device)).logits[0, :-1]
    finally:
        model.train(was)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise MtdError(f"{name} is not a causal language model: its logits at a position change with a later "
                       "token (an encoder such as BERT); give a decoder (GPT-2, Llama, SmolLM...)")


def vocab_size(model: torch.nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def depth_and_width(model: torch.nn.Module) -> tuple[int | None, int | None]:
    c = model.config
    depth = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
    width = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
    return (None if depth is None else int(depth)), (None if width is None else int(width))


def next_token_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, V) raw logits, position i predicting token i + 1; right padding (``mask`` False) needs no attention
    mask in a causal model, since no valid position attends to a later one, but is given when present."""
    out = model(input_ids=ids, attention_mask=None if mask is None else mask.long())
    return out.logits
