"""ComplexityClassifier: P(the large model is needed) for a chat request, in pure numpy.

    clf = ComplexityClassifier.load()                  # once, at start-up (~0.3 s: tokenizer + weights)
    threshold = clf.threshold_for_large_share(0.30)    # or clf.threshold_for_quality(0.8)
    use_large = clf.score(messages=req["messages"]) >= threshold

The score is the model's estimate of the large model's win rate over the small one on this
prompt (ties count half; see fit.py), so higher means "more likely to need the large model".
Thresholds come from held-out calibration tables shipped with the weights (calibration.py).

An instance is immutable after ``load``: share it between threads and requests freely.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from policies import hashing, tokens
from policies.calibration import Calibration
from policies.features import DENSE_FEATURE_NAMES, FeatureConfig, Featurizer, RequestFeatures
from policies.model import ModelParams, sigmoid_scalar
from policies.request_text import from_request

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_STEM = "complexity"
FORMAT_NAME = "muxgate-complexity"
FORMAT_VERSION = 1

_shipped_lock = threading.Lock()
_shipped: "ComplexityClassifier | None" = None


def _resolve(path: str | Path | None) -> tuple[Path, Path]:
    """(json, npz) paths for a weights directory, or for either file of the pair."""
    path = WEIGHTS_DIR if path is None else Path(path)
    if path.is_dir():
        path = path / f"{WEIGHTS_STEM}.json"
    return path.with_suffix(".json"), path.with_suffix(".npz")


@dataclass(frozen=True)
class ComplexityClassifier:
    """A loaded complexity model with its featurizer and calibration tables."""

    params: ModelParams
    featurizer: Featurizer
    calibration: Calibration
    metadata: Mapping[str, Any]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ComplexityClassifier":
        """Load weights from ``path`` (a directory or its .json/.npz file); default: the shipped ones.

        Raises FileNotFoundError if the files are missing and ValueError if they were written
        for a different feature layout than this code computes.
        """
        meta_path, arrays_path = _resolve(path)
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
        if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} weights file")
        if list(metadata.get("dense_feature_names", [])) != list(DENSE_FEATURE_NAMES):
            raise ValueError(f"{meta_path}: trained with different dense features; retrain with python -m policies.train")
        if metadata.get("hashing_version") != hashing.VERSION:
            raise ValueError(f"{meta_path}: trained with hashing v{metadata.get('hashing_version')}, code has v{hashing.VERSION}")
        feature_config = FeatureConfig.from_dict(metadata["feature_config"])
        with np.load(arrays_path) as arrays:
            params = ModelParams.from_arrays(arrays)
        if len(params.sparse) != 1 << feature_config.hash_bits:
            raise ValueError(f"{arrays_path}: sparse weights do not match hash_bits={feature_config.hash_bits}")
        tokens.get_encoding()  # load the tokenizer now, not on the first request
        return cls(
            params=params,
            featurizer=Featurizer(feature_config),
            calibration=Calibration.from_dict(metadata["calibration"]),
            metadata=metadata,
        )

    @classmethod
    def shipped(cls) -> "ComplexityClassifier":
        """The shipped weights, loaded on first call and shared by every later caller (thread-safe)."""
        global _shipped
        with _shipped_lock:
            if _shipped is None:
                _shipped = cls.load()
            return _shipped

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the weights pair into ``path`` (a directory); returns (json, npz) paths."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        meta_path, arrays_path = _resolve(directory)
        np.savez_compressed(arrays_path, **self.params.arrays())
        metadata = {
            **self.metadata,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "feature_config": self.featurizer.config.to_dict(),
            "hashing_version": hashing.VERSION,
            "dense_feature_names": list(DENSE_FEATURE_NAMES),
            "calibration": self.calibration.to_dict(),
        }
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=1, sort_keys=True)
            f.write("\n")
        return meta_path, arrays_path

    def features(
        self, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None
    ) -> RequestFeatures:
        """The features this classifier scores (exposed for debugging and explanations)."""
        return self.featurizer(messages=messages, prompt=prompt)

    def score_features(self, features: RequestFeatures) -> float:
        """P(large needed) for already computed features."""
        return sigmoid_scalar(self.params.logit(features))

    def score(self, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None) -> float:
        """P(the large model is needed) in [0, 1] for OpenAI chat ``messages`` or a plain ``prompt``."""
        dense, groups = self.featurizer.dense_and_buckets(from_request(messages=messages, prompt=prompt))
        return sigmoid_scalar(self.params.logit_from_groups(dense, groups))

    def threshold_for_large_share(self, share: float) -> float:
        """Threshold t such that ``score >= t`` holds for ``share`` of traffic like the training mix."""
        return self.calibration.threshold_for_large_share(share)

    def large_share_for_threshold(self, threshold: float) -> float:
        """Expected share of (training-mix) traffic with ``score >= threshold``."""
        return self.calibration.large_share_for_threshold(threshold)

    def threshold_for_quality(self, target_pgr: float) -> float:
        """Threshold expected to recover ``target_pgr`` (e.g. 0.8) of the small->large quality gap.

        Calibrated on held-out prompts of the training mix; PGR above ~1 is only possible because
        the small model sometimes beats the large one.
        """
        return self.calibration.threshold_for_quality(target_pgr)

    def explain(
        self, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None, top: int = 3
    ) -> dict[str, float]:
        """The ``top`` dense features pushing this request's score up or down most (logit units).

        Linear part only, which is enough for a readable ``reason`` in the routing decision.
        """
        f = self.featurizer(messages=messages, prompt=prompt)
        z = self.params.standardise(f.dense)
        contributions = z * self.params.dense_linear
        order = np.argsort(-np.abs(contributions))[:top]
        out = {DENSE_FEATURE_NAMES[i]: round(float(contributions[i]), 3) for i in order}
        if len(f.indices):
            out["lexical"] = round(float(self.params.sparse[f.indices] @ f.values), 3)
        return out
