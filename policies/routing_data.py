"""Routing data: JSONL rows of (prompt, small model's quality, large model's quality).

Each row has ``id``, ``source``, ``prompt``, ``small_score`` and ``large_score`` in [0, 1], and
optionally ``turns`` (the user turns of a multi-turn conversation). See policies/data/NOTICE
for where the rows come from and their licences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.features import Featurizer
from policies.request_text import RequestText, from_messages, from_prompt

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "routing"
SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "data"
SYNTHETIC_DATA_DIR = SAMPLE_DATA_DIR / "synthetic"


@dataclass(frozen=True)
class RoutingExample:
    """One prompt with both models' quality on it."""

    id: str
    source: str
    text: RequestText
    small_score: float
    large_score: float

    @property
    def family(self) -> str:
        """The dataset a row comes from ("mmlu", "gsm8k", ...), without its subset."""
        return self.source.split("/", 1)[0]


def _example(row: dict) -> RoutingExample:
    turns = row.get("turns")
    if turns:
        text = from_messages({"role": "user", "content": t} for t in turns)
    else:
        text = from_prompt(row["prompt"])
    return RoutingExample(
        id=str(row["id"]),
        source=str(row.get("source", "")),
        text=text,
        small_score=float(row["small_score"]),
        large_score=float(row["large_score"]),
    )


def load_file(path: str | Path) -> list[RoutingExample]:
    """Read one JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [_example(json.loads(line)) for line in f if line.strip()]


def load(path: str | Path) -> list[RoutingExample]:
    """Read a JSONL file, or every ``*.jsonl`` in a directory (sorted by name, so order is stable)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no *.jsonl files in {path}")
        return [ex for f in files for ex in load_file(f)]
    return load_file(path)


def default_data_dir() -> Path:
    """The full shared data set when this checkout has it, else the small in-repo sample."""
    if SHARED_DATA_DIR.is_dir() and any(SHARED_DATA_DIR.glob("*.jsonl")):
        return SHARED_DATA_DIR
    return SAMPLE_DATA_DIR


@dataclass
class FeatureMatrix:
    """Featurised examples in CSR layout: row i's buckets are indices[indptr[i]:indptr[i+1]]."""

    dense: np.ndarray  # (n, n_dense) float32
    indptr: np.ndarray  # (n + 1,) int64
    indices: np.ndarray  # int64
    values: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.dense)

    def rows(self, selection: np.ndarray) -> "FeatureMatrix":
        """The sub-matrix of the given row numbers, in that order."""
        selection = np.asarray(selection, dtype=np.int64)
        starts, ends = self.indptr[selection], self.indptr[selection + 1]
        lengths = ends - starts
        take = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(selection) else np.zeros(0, np.int64)
        return FeatureMatrix(
            dense=self.dense[selection],
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            indices=self.indices[take],
            values=self.values[take],
        )


def featurize_all(examples: list[RoutingExample], featurizer: Featurizer) -> FeatureMatrix:
    """Featurise every example (about 5k prompts per second on one core)."""
    feats = [featurizer.from_text(ex.text) for ex in examples]
    lengths = [len(f.indices) for f in feats]
    return FeatureMatrix(
        dense=np.stack([f.dense for f in feats]) if feats else np.zeros((0, 0), np.float32),
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        indices=np.concatenate([f.indices for f in feats]) if feats else np.zeros(0, np.int64),
        values=np.concatenate([f.values for f in feats]) if feats else np.zeros(0, np.float32),
    )


# Families whose ``source`` subset names a topic with many rows (MMLU's subjects). LLMRouter's
# subsets are its train/test split, GSM8K has none, MT-Bench's categories have 20 rows each.
TOPIC_FAMILIES = frozenset({"mmlu"})


def topic_labels(examples: list[RoutingExample]) -> np.ndarray:
    """Each row's topic (its ``source``) for families in TOPIC_FAMILIES, else "" (training metadata only)."""
    return np.array([ex.source if ex.family in TOPIC_FAMILIES else "" for ex in examples], dtype=object)


def score_arrays(examples: list[RoutingExample]) -> tuple[np.ndarray, np.ndarray]:
    """(small_scores, large_scores) as float64 arrays."""
    small = np.array([ex.small_score for ex in examples], dtype=np.float64)
    large = np.array([ex.large_score for ex in examples], dtype=np.float64)
    return small, large
