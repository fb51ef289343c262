"""A static sentence embedding: all-MiniLM-L6-v2 distilled once, offline, into a word table.

Lexical hashed features fit the topics of the data they were trained on; an embedding places a
prompt among everything the sentence encoder saw, which is what lets an adaptive router carry a
few hundred labels of one deployment over to prompts it has not seen. Running the encoder per
request would cost milliseconds, so ``policies/distill_embedding.py`` ran it once per vocabulary
word, projected the vectors to ``dim`` principal components and stored them (float16) in
``policies/weights/embedding.npz`` (Apache-2.0, from sentence-transformers/all-MiniLM-L6-v2; see
policies/weights/NOTICE.txt). A prompt's embedding is the mean of its words' rows, scaled to
norm sqrt(dim) (about unit variance per dimension), so it costs one hash per word (the same word
hashes the classifier's features use) and a sorted lookup: tens of microseconds.

Words outside the table (it holds the encoder's whole-word vocabulary) are skipped; a prompt with
none gets the zero vector, which the adaptive router reads as "no information".
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from policies import hashing
from policies.features import _window
from policies.request_text import RequestText, from_request

TABLE_PATH = Path(__file__).resolve().parent / "weights" / "embedding.npz"
FORMAT_NAME = "muxgate-static-embedding"
FORMAT_VERSION = 1


class StaticEmbedder:
    """Word-table embedding of a request's user text; immutable, share it freely."""

    def __init__(self, word_hashes: np.ndarray, vectors: np.ndarray, metadata: Mapping[str, Any] | None = None):
        order = np.argsort(word_hashes)
        self.word_hashes = np.ascontiguousarray(word_hashes[order], dtype=np.uint64)
        self.vectors = np.ascontiguousarray(vectors[order], dtype=np.float32)
        self.vectors.setflags(write=False)
        self.dim = int(self.vectors.shape[1])
        self.metadata = dict(metadata or {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> "StaticEmbedder":
        with np.load(Path(path) if path is not None else TABLE_PATH) as arrays:
            if str(arrays["format"]) != FORMAT_NAME or int(arrays["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path or TABLE_PATH}: not a {FORMAT_NAME} v{FORMAT_VERSION} table")
            if int(arrays["hashing_version"]) != hashing.VERSION:
                raise ValueError("embedding table built with another word hashing; rebuild it")
            return cls(arrays["word_hashes"], arrays["vectors"].astype(np.float32),
                       {"source": str(arrays["source"]), "words": int(len(arrays["word_hashes"]))})

    @staticmethod
    @functools.cache
    def shipped() -> "StaticEmbedder":
        """The shipped table, loaded once (two first callers at once may both load it: harmless)."""
        return StaticEmbedder.load()

    def embed(self, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None) -> np.ndarray:
        return self.embed_text(from_request(messages=messages, prompt=prompt))

    def embed_text(self, text: RequestText) -> np.ndarray:
        """float32 (dim,) embedding of the request's user text."""
        raw = _window(text.user.encode("utf-8", "replace"))
        data = hashing.lower_bytes(raw)
        starts, ends = hashing.word_spans(data)
        if len(starts) == 0:
            return np.zeros(self.dim, dtype=np.float32)
        return self.embed_words(hashing.word_hashes(hashing.prefix_sums(data), starts, ends))

    def embed_words(self, words: np.ndarray) -> np.ndarray:
        """The embedding of a text given its word hashes (Featurizer.analyse computes them)."""
        out = np.zeros(self.dim, dtype=np.float32)
        if len(words) == 0:
            return out
        idx = np.searchsorted(self.word_hashes, words)
        idx[idx >= len(self.word_hashes)] = 0
        idx = idx[self.word_hashes[idx] == words]
        if len(idx) == 0:
            return out
        mean = self.vectors[idx].sum(axis=0)
        norm = float(np.sqrt(mean @ mean))
        if norm > 0:
            out[:] = mean * (np.sqrt(self.dim) / norm)
        return out
