"""The complexity model's parameters and its numpy forward pass.

  logit = bias + sum_i sparse[bucket_i] * value_i          hashed words / n-grams (linear)
        + dense_linear . z + head_out . relu(head_in z + head_bias)

  z = (clip(dense, dense_low, dense_high) - dense_mean) / dense_scale

Dense features are clipped to the range seen in training (0.1% / 99.9% quantiles) first: the
training prompts are benchmark questions, and a one-word "thanks!" has ratios (markers per word,
chars per token) far outside them, where a linear term would extrapolate wildly.

The dense features go through a small ReLU layer as well as a linear term because their effect
is not monotone (very short and very long prompts are both cheap to answer well). The hidden
layer may be empty (width 0), which makes the whole model a logistic regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.features import RequestFeatures


@dataclass(frozen=True)
class ModelParams:
    """All arrays are float32 except where noted; shapes in the comments."""

    dense_low: np.ndarray  # (d,) clip range from the training data
    dense_high: np.ndarray  # (d,)
    dense_mean: np.ndarray  # (d,)
    dense_scale: np.ndarray  # (d,) positive
    dense_linear: np.ndarray  # (d,)
    head_in: np.ndarray  # (h, d)
    head_bias: np.ndarray  # (h,)
    head_out: np.ndarray  # (h,)
    sparse: np.ndarray  # (2**bits,)
    bias: float

    def arrays(self) -> dict[str, np.ndarray]:
        """Name -> array, for saving."""
        return {
            "dense_low": self.dense_low,
            "dense_high": self.dense_high,
            "dense_mean": self.dense_mean,
            "dense_scale": self.dense_scale,
            "dense_linear": self.dense_linear,
            "head_in": self.head_in,
            "head_bias": self.head_bias,
            "head_out": self.head_out,
            "sparse": self.sparse,
            "bias": np.array([self.bias], dtype=np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays) -> "ModelParams":
        f32 = {}
        for key in ("dense_low", "dense_high", "dense_mean", "dense_scale", "dense_linear", "head_in", "head_bias", "head_out", "sparse"):
            array = np.array(arrays[key], dtype=np.float32, order="C")
            array.setflags(write=False)  # shared by every request thread: make that safe by construction
            f32[key] = array
        return cls(**f32, bias=float(np.asarray(arrays["bias"]).reshape(-1)[0]))

    @classmethod
    def mean_of(cls, members: list["ModelParams"]) -> "ModelParams":
        """One ModelParams whose logit is the mean of the members' logits (an ensemble at no cost).

        The logit is linear in the sparse, dense-linear and bias parameters, so those average;
        the hidden layers are stacked side by side with their output weights divided by the
        member count. Members must share the dense standardisation (fitted on the same rows).
        """
        if not members:
            raise ValueError("mean_of needs at least one member")
        first = members[0]
        for other in members[1:]:
            for key in ("dense_low", "dense_high", "dense_mean", "dense_scale"):
                if not np.array_equal(getattr(first, key), getattr(other, key)):
                    raise ValueError(f"members differ in {key}: they were not fitted on the same rows")
        k = len(members)
        return cls.from_arrays({
            "dense_low": first.dense_low,
            "dense_high": first.dense_high,
            "dense_mean": first.dense_mean,
            "dense_scale": first.dense_scale,
            "dense_linear": np.mean([m.dense_linear for m in members], axis=0),
            "head_in": np.concatenate([m.head_in for m in members], axis=0),
            "head_bias": np.concatenate([m.head_bias for m in members]),
            "head_out": np.concatenate([m.head_out for m in members]) / k,
            "sparse": np.mean([m.sparse for m in members], axis=0),
            "bias": np.array([np.mean([m.bias for m in members])]),
        })

    def standardise(self, dense: np.ndarray) -> np.ndarray:
        """Clip dense features to the training range and standardise them (z in the docstring)."""
        return (np.clip(dense, self.dense_low, self.dense_high) - self.dense_mean) / self.dense_scale

    def _dense_logit(self, dense: np.ndarray) -> np.ndarray:
        z = self.standardise(dense)
        out = z @ self.dense_linear
        if len(self.head_out):
            out = out + np.maximum(z @ self.head_in.T + self.head_bias, 0.0) @ self.head_out
        return out

    def logit(self, features: RequestFeatures) -> float:
        """Logit of one request."""
        sparse = float(self.sparse[features.indices] @ features.values) if len(features.indices) else 0.0
        return self.bias + sparse + float(self._dense_logit(features.dense))

    def logit_from_groups(self, dense: np.ndarray, groups: list[np.ndarray]) -> float:
        """Logit from Featurizer.dense_and_buckets output (same value as ``logit``, fewer copies)."""
        sparse = 0.0
        for group in groups:
            sparse += float(self.sparse[group].sum(dtype=np.float64)) / np.sqrt(len(group))
        return self.bias + sparse + float(self._dense_logit(dense))

    def logits(self, dense: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Logits of many requests in CSR layout (see routing_data.FeatureMatrix)."""
        contributions = self.sparse[indices] * values
        cumulative = np.concatenate([[0.0], np.cumsum(contributions, dtype=np.float64)])
        sparse = cumulative[indptr[1:]] - cumulative[indptr[:-1]]
        return self.bias + sparse + self._dense_logit(dense).astype(np.float64)


def sigmoid_scalar(x: float) -> float:
    """sigmoid for one Python float (no numpy overhead on the request path)."""
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def sigmoid(x):
    """Numerically safe logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))
