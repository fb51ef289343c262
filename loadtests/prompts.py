"""Prompts for load generation, from the corpus that ships in the repo (MT-Bench and GSM8K
questions; see workers/zoo_data/NOTICE): mixed lengths, no network."""

from __future__ import annotations

import random
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "workers" / "zoo_data" / "corpus.txt"


def load_prompts() -> list[str]:
    return [p.strip() for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


def pick(rng: random.Random, items: list, weights: list[float] | None = None):
    return rng.choices(items, weights)[0] if weights else rng.choice(items)
