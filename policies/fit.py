"""Fitting the complexity model with torch (training only; serving is numpy, see model.py).

Label: the large model's win rate over the small one on a prompt, with ties counting half,

  target = (1 + large_score - small_score) / 2      in [0, 1]

trained with cross-entropy against the model's sigmoid. That makes the score "P(the large model
is needed)" in RouteLLM's sense (P(strong wins), ties split), and, unlike a 0/1 "large is
better" label, prompts the small model answers better count against routing them large.

Topic shrinkage (``FitConfig.topic_shrink``): on a benchmark with labelled topics (MMLU's 57
subjects) a single 0/1 outcome is a very noisy label, while the topic's mean gain over the
training rows is a clean one. Each such row's gain is pulled towards its topic's mean,

  gain' = topic_mean + topic_shrink * (gain - topic_mean)

(1.0 = off), so the lexical weights learn mostly "which topic is this, and how much does the
large model gain on it" plus a damped per-prompt part. The topic is training metadata only (the
row's ``source``); serving sees the prompt alone. Topic means come from the rows being fitted,
so a cross-validation fold never sees its test rows' outcomes. When the training rows have
topics, train.fit_with_selection fits one model on the raw labels and one on the shrunk labels
and ships the mean of their logits as one ModelParams (ModelParams.mean_of): on MMLU the pair
beats either alone (docs/BENCHMARKS.md).

Full-batch L-BFGS: the data is small, it needs no learning-rate tuning, and a fixed seed gives
the same weights on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.model import ModelParams
from policies.routing_data import FeatureMatrix


CLIP_QUANTILE = 0.001  # dense features are clipped to [0.1%, 99.9%] of the training data


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one fit."""

    hidden: int = 8  # width of the ReLU layer on dense features (0 = logistic regression)
    l2_sparse: float = 1e-3  # L2 on hashed-feature weights (train.py picks it from a grid)
    # L2 on dense-feature and hidden-layer weights is this divided by the number of training rows:
    # the small ReLU layer overfits small data sets (GSM8K's ~1k rows) unless shrunk harder, and
    # 10 / rows matches what works on both 1k and 11k rows.
    l2_dense_rows: float = 10.0
    max_iter: int = 150  # L-BFGS iterations
    seed: int = 0
    # Weight of a row's own outcome against its topic's mean gain in the second ensemble member
    # (see the module docstring; 1.0 = no second member). 0.3 was chosen by comparing 5-fold CV
    # on MMLU (docs/BENCHMARKS.md), not inside the folds.
    topic_shrink: float = 0.3


def win_rate_targets(
    small: np.ndarray, large: np.ndarray, topics: np.ndarray | None = None, topic_shrink: float = 1.0
) -> np.ndarray:
    """Training target per prompt: (1 + gain) / 2 with gain = large - small, clipped to [0, 1].

    With ``topics`` (one label per row, "" for rows without a topic) and ``topic_shrink`` < 1,
    each topic row's gain is first shrunk towards its topic's mean gain over these rows.
    """
    gain = np.asarray(large, float) - np.asarray(small, float)
    if topics is not None and topic_shrink != 1.0:
        topics = np.asarray(topics)
        if topics.shape != gain.shape:
            raise ValueError("topics must have one label per row")
        labels, inverse = np.unique(topics, return_inverse=True)
        means = np.bincount(inverse, gain, minlength=len(labels)) / np.bincount(inverse, minlength=len(labels))
        has_topic = topics != ""
        mean = means[inverse]
        gain = np.where(has_topic, mean + topic_shrink * (gain - mean), gain)
    return np.clip((1.0 + gain) / 2.0, 0.0, 1.0)


def _sparse_matvec():
    """X @ w for a CSR matrix X, with a fast backward pass.

    embedding_bag's own backward with per-sample weights is ~50x slower on CPU than a plain
    index_add_ into the gradient, which is all the backward needs: grad_w = X^T grad_out.
    """
    import torch
    import torch.nn.functional as F

    class SparseMatVec(torch.autograd.Function):
        @staticmethod
        def forward(ctx, weights, indices, offsets, values, rows):
            ctx.save_for_backward(indices, values, rows)
            ctx.n_buckets = weights.shape[0]
            return F.embedding_bag(indices, weights.unsqueeze(1), offsets, mode="sum", per_sample_weights=values).squeeze(1)

        @staticmethod
        def backward(ctx, grad_out):
            indices, values, rows = ctx.saved_tensors
            grad = torch.zeros(ctx.n_buckets, dtype=grad_out.dtype)
            grad.index_add_(0, indices, values * grad_out[rows])
            return grad, None, None, None, None

    return SparseMatVec.apply


def fit(
    matrix: FeatureMatrix,
    targets: np.ndarray,
    n_buckets: int,
    config: FitConfig = FitConfig(),
    sample_weights: np.ndarray | None = None,
) -> ModelParams:
    """Fit ModelParams to soft targets in [0, 1] (deterministic for a given config.seed)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    n, d = matrix.dense.shape
    low = np.quantile(matrix.dense, CLIP_QUANTILE, axis=0).astype(np.float32)
    high = np.quantile(matrix.dense, 1.0 - CLIP_QUANTILE, axis=0).astype(np.float32)
    clipped = np.clip(matrix.dense, low, high)
    mean = clipped.mean(axis=0).astype(np.float32)
    scale = clipped.std(axis=0).astype(np.float32)
    scale[scale < 1e-6] = 1.0  # constant features (e.g. has_system in the data) stay inert

    z = torch.from_numpy((clipped - mean) / scale).float()
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    w = torch.ones(n) if sample_weights is None else torch.from_numpy(np.asarray(sample_weights, np.float32))
    w = w / w.mean()
    indices = torch.from_numpy(matrix.indices)
    offsets = torch.from_numpy(matrix.indptr[:-1])
    values = torch.from_numpy(matrix.values).float()
    rows = torch.from_numpy(np.repeat(np.arange(n), np.diff(matrix.indptr)))
    sparse_matvec = _sparse_matvec()

    l2_dense = config.l2_dense_rows / max(n, 1)
    base_rate = float(np.clip(np.average(targets, weights=w.numpy()), 1e-3, 1 - 1e-3))
    bias = torch.tensor([np.log(base_rate / (1 - base_rate))], dtype=torch.float32, requires_grad=True)
    sparse = torch.zeros(n_buckets, requires_grad=True)
    dense_linear = torch.zeros(d, requires_grad=True)
    head_in = (torch.randn(config.hidden, d) / np.sqrt(d)).requires_grad_(True)
    head_bias = torch.zeros(config.hidden, requires_grad=True)
    head_out = (torch.randn(config.hidden) * 0.01).requires_grad_(True)
    params = [bias, sparse, dense_linear, head_in, head_bias, head_out]

    def loss_fn():
        logit = bias + dense_linear @ z.T
        if config.hidden:
            logit = logit + torch.relu(z @ head_in.T + head_bias) @ head_out
        logit = logit + sparse_matvec(sparse, indices, offsets, values, rows)
        data_loss = (F.binary_cross_entropy_with_logits(logit, y, reduction="none") * w).mean()
        penalty = config.l2_sparse * sparse.pow(2).sum() + l2_dense * (
            dense_linear.pow(2).sum() + head_in.pow(2).sum() + head_out.pow(2).sum()
        )
        return data_loss + penalty

    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=config.max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)

    return ModelParams(
        dense_low=low,
        dense_high=high,
        dense_mean=mean,
        dense_scale=scale,
        dense_linear=dense_linear.detach().numpy().copy(),
        head_in=head_in.detach().numpy().copy(),
        head_bias=head_bias.detach().numpy().copy(),
        head_out=head_out.detach().numpy().copy(),
        sparse=sparse.detach().numpy().copy(),
        bias=float(bias.detach()[0]),
    )
