"""A tiny causal language model's random config from a corpus, for offline work: a byte-level BPE tokenizer
trained on the text (``tokenizers``) and a GPT-2-shaped ``config.json`` beside it, in one folder that
``hf:FOLDER`` names (``models.causal_lm``: a folder without weights starts from a seeded random initialisation).

    python -m mtd_cache.models.tiny_lm CORPUS.txt OUT_FOLDER [--vocab 2048] [--layers 2] [--width 128]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from ..core.safe_files import save_into

EOS = "<|endoftext|>"


def make_tiny_lm(folder: str | Path, texts: Iterable[str], vocab_size: int = 2048, layers: int = 2,
                 width: int = 128, heads: int = 4, positions: int = 256) -> Path:
    """Write ``folder``: a byte-level BPE of ``vocab_size`` ids trained on ``texts`` (end of text: ``<|endoftext|>``)
    and a GPT-2 config of ``layers`` x ``width`` over it; no weights."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    eos = tok.convert_tokens_to_ids(EOS)
    config = GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                        bos_token_id=eos, eos_token_id=eos)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    save_into(folder, lambda tmp: (config.save_pretrained(tmp), tok.save_pretrained(tmp)))
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path, help="plain text the tokenizer learns from")
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--positions", type=int, default=256)
    a = ap.parse_args(argv)
    text = a.corpus.read_text(encoding="utf-8", errors="replace")
    make_tiny_lm(a.out, [text[i:i + 4096] for i in range(0, len(text), 4096)], a.vocab, a.layers, a.width,
                 positions=a.positions)
    print(f"wrote {a.out}: a {a.vocab}-id byte-level BPE and a GPT-2 config {a.layers} x {a.width} (no weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
