"""Outcome: one labelled routing decision (feedback, shadow evaluation or a replay), and the
compact byte encoding of a request's features that the store keeps instead of its prompt.

    row = Outcome(request_id, team, pair="small-model->large-model", routed="small",
                  small_score=0.8, large_score=None, source="feedback",
                  features=encode_features(features), created_at=time.time())
    router.observe(row)                           # policies.adaptive.AdaptiveRouter

Scores are in [0, 1]; None where unknown (feedback scores only the model that answered, a
shadow evaluation scores both). The pair names the two models the label is about, so labels of
one deployment's pair never teach another pair's router.

The encoding is exact (decode(encode(f)) has the same arrays, bit for bit) and versioned: a
9-byte header, then zlib over the float32 dense vector, the hashed buckets (uint32), their values
(float32; they repeat within a feature group and compress well) and the optional embedding. A
short chat prompt is a few hundred bytes; an 8,000-character one a few KiB. No text is kept.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from policies.features import RequestFeatures

ROUTED = ("small", "large")
SOURCES = ("feedback", "shadow", "replay")
PAIR_SEPARATOR = "->"

_MAGIC = b"mf"
_VERSION = 1
_HEADER = struct.Struct("<2sBHIH")  # magic, version, n_dense, n_buckets, n_embedding


def pair_name(small: str, large: str) -> str:
    """The pair key of a route: ``"<small>-><large>"``."""
    return f"{small}{PAIR_SEPARATOR}{large}"


@dataclass(frozen=True)
class Outcome:
    """A routing decision and what is known about how well each tier answered it."""

    request_id: str
    team: str
    pair: str  # "<small>-><large>"
    routed: str  # "small" | "large": the tier that answered the client
    small_score: float | None  # in [0, 1]; None: not measured
    large_score: float | None
    source: str  # "feedback" | "shadow" | "replay"
    features: bytes  # encode_features(...)
    created_at: float

    def __post_init__(self):
        if self.routed not in ROUTED:
            raise ValueError(f"routed must be one of {ROUTED}, got {self.routed!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if PAIR_SEPARATOR not in self.pair:
            raise ValueError(f"pair must look like '<small>{PAIR_SEPARATOR}<large>', got {self.pair!r}")
        for name in ("small_score", "large_score"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1] or None, got {value!r}")
        if self.small_score is None and self.large_score is None:
            raise ValueError("an outcome needs at least one score")

    @property
    def both_scored(self) -> bool:
        return self.small_score is not None and self.large_score is not None

    def decoded_features(self) -> RequestFeatures:
        return decode_features(self.features)


def encode_features(f: RequestFeatures) -> bytes:
    """Compact, exact bytes of ``f`` (see the module docstring)."""
    dense = np.ascontiguousarray(f.dense, dtype="<f4")
    indices = np.asarray(f.indices)
    if len(indices) and (indices.min() < 0 or indices.max() >= 1 << 32):
        raise ValueError("bucket ids must fit in uint32")
    indices = np.ascontiguousarray(indices, dtype="<u4")
    values = np.ascontiguousarray(f.values, dtype="<f4")
    if len(values) != len(indices):
        raise ValueError("indices and values differ in length")
    embedding = np.zeros(0, dtype="<f4") if f.embedding is None else np.ascontiguousarray(f.embedding, dtype="<f4")
    header = _HEADER.pack(_MAGIC, _VERSION, len(dense), len(indices), len(embedding))
    body = dense.tobytes() + indices.tobytes() + values.tobytes() + embedding.tobytes()
    return header + zlib.compress(body, 6)


def decode_features(b: bytes) -> RequestFeatures:
    """The RequestFeatures that ``encode_features`` wrote; ValueError for anything else."""
    if len(b) < _HEADER.size:
        raise ValueError("feature bytes too short")
    magic, version, n_dense, n_buckets, n_embedding = _HEADER.unpack_from(b)
    if magic != _MAGIC:
        raise ValueError("not muxgate feature bytes")
    if version != _VERSION:
        raise ValueError(f"feature bytes v{version}; this code reads v{_VERSION}")
    try:
        body = zlib.decompress(b[_HEADER.size :])
    except zlib.error as exc:
        raise ValueError(f"corrupt feature bytes: {exc}") from None
    sizes = (4 * n_dense, 4 * n_buckets, 4 * n_buckets, 4 * n_embedding)
    if len(body) != sum(sizes):
        raise ValueError("feature bytes have the wrong length for their header")
    parts, offset = [], 0
    for size, dtype in zip(sizes, ("<f4", "<u4", "<f4", "<f4")):
        parts.append(np.frombuffer(body, dtype=dtype, count=size // 4, offset=offset))
        offset += size
    dense, indices, values, embedding = parts
    return RequestFeatures(
        dense=dense.astype(np.float32),
        indices=indices.astype(np.int64),
        values=values.astype(np.float32),
        embedding=embedding.astype(np.float32) if n_embedding else None,
    )
