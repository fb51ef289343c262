"""Request features for the complexity classifier.

A request becomes two things:

* ``dense``: a short vector of hand-made signals (lengths, cl100k token count, turns, code /
  math / reasoning markers, character-class ratios), listed in ``DENSE_FEATURE_NAMES``;
* ``indices`` / ``values``: a sparse bag of hashed lowercase words, word bigrams and character
  n-grams (the hashing trick), as bucket ids with one weight each. Buckets may repeat; the model
  sums ``weight[bucket] * value``, so there is no need to build a dense 2**bits vector.

Everything is numpy over the UTF-8 bytes, so featurising an 8,000-character prompt costs a few
hundred microseconds on one core. Nothing here does I/O after the tokenizer is loaded once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from policies import hashing, tokens
from policies.request_text import RequestText, from_request

# Long prompts are hashed as head + tail: the instructions tend to sit at the start, the actual
# question at the end.
_HEAD_BYTES = 3072
_TAIL_BYTES = hashing.MAX_BYTES - _HEAD_BYTES - 1


@dataclass(frozen=True)
class FeatureConfig:
    """Which hashed features to compute; saved with the weights so serving matches training."""

    hash_bits: int = 18
    word_unigrams: bool = True
    word_bigrams: bool = True
    char_ngrams: tuple[int, ...] = (4,)

    def to_dict(self) -> dict:
        return {**asdict(self), "char_ngrams": list(self.char_ngrams)}

    @classmethod
    def dense_only(cls) -> "FeatureConfig":
        """No hashed lexical features: only the topic-independent dense signals.

        Lexical features fit the topics of the training data; on traffic unlike it this variant
        can transfer better (see docs/BENCHMARKS.md, cross-source rows).
        """
        return cls(hash_bits=8, word_unigrams=False, word_bigrams=False, char_ngrams=())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureConfig":
        data = dict(data)
        data["char_ngrams"] = tuple(data.get("char_ngrams", ()))
        return cls(**data)


@dataclass(frozen=True)
class RequestFeatures:
    """Features of one request (see the module docstring)."""

    dense: np.ndarray  # float32, len(DENSE_FEATURE_NAMES)
    indices: np.ndarray  # int64 bucket ids in [0, 2**hash_bits)
    values: np.ndarray  # float32, same length as indices
    # float32 sentence-embedding projection (policies/embedding.py) when a caller asked for it;
    # the shipped classifier does not read it, the adaptive router does.
    embedding: np.ndarray | None = None


# Marker words, matched as whole lowercase words. They give the model a prior that transfers
# across topics, which the lexical features (fit to the training topics) do not.
_MARKERS = {
    "code": (
        "def return import function class const var let print printf int void public static "
        "elif lambda sql select python javascript java typescript rust golang html css code "
        "program algorithm bug debug compile regex json api async script implement"
    ),
    "math": (
        "solve calculate compute equation integral derivative probability sum product percent "
        "ratio theorem matrix polynomial prime triangle area fraction average total remainder "
        "many much cost profit dollars"
    ),
    "reasoning": (
        "why explain reason reasoning step analyze analyse compare contrast evaluate justify "
        "infer implies therefore deduce argument logic puzzle clue conclude assume hypothesis "
        "prove proof"
    ),
    "chitchat": "hi hello hey thanks thank please joke weather favorite favourite",
    "writing": "write rewrite summarize summarise translate poem story email essay blog list draft",
}
_MARKER_CATEGORIES = tuple(_MARKERS)


def _marker_table() -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted(
        {(hashing.stable_word_hash(word), i) for i, cat in enumerate(_MARKER_CATEGORIES) for word in _MARKERS[cat].split()}
    )
    return (
        np.array([h for h, _ in pairs], dtype=np.uint64),
        np.array([c for _, c in pairs], dtype=np.int64),
    )


_MARKER_HASHES, _MARKER_CATEGORY = _marker_table()


# Byte classes counted in one matrix product over the byte histogram: columns of _BYTE_CLASSES.
_CLASS_CHARS = (
    ("digit", "0123456789"),
    ("upper", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ("lower", "abcdefghijklmnopqrstuvwxyz"),
    ("punct", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    ("code_punct", "{}();[]<>_#"),
    ("math_op", "+-*/=^%<>"),
    ("latex", "\\$"),
    ("question", "?"),
)
_BYTE_CLASSES = np.zeros((256, len(_CLASS_CHARS) + 1))
for _col, (_name, _chars) in enumerate(_CLASS_CHARS):
    _BYTE_CLASSES[list(_chars.encode("ascii")), _col] = 1.0
_BYTE_CLASSES[128:, len(_CLASS_CHARS)] = 1.0  # non-ASCII (UTF-8 continuation and lead bytes)
(_DIGIT, _UPPER, _LOWER, _PUNCT, _CODE_PUNCT, _MATH_OP, _LATEX, _QUESTION, _NON_ASCII) = range(len(_CLASS_CHARS) + 1)

DENSE_FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_tokens",
    "chars_per_token",
    "mean_log_token_rank",
    "rare_token_share",
    "log_words",
    "log_lines",
    "log_user_turns",
    "has_system",
    "log_context_chars",
    "log_last_user_chars",
    "digit_ratio",
    "upper_ratio",
    "non_ascii_ratio",
    "punct_ratio",
    "code_punct_ratio",
    "math_op_ratio",
    "log_latex_marks",
    "log_code_fences",
    "log_question_marks",
    "ends_with_question",
    "log_choice_lines",
    "log_numbers",
    "mean_word_len",
    "type_token_ratio",
    *(f"log_{cat}_markers" for cat in _MARKER_CATEGORIES),
)
N_DENSE = len(DENSE_FEATURE_NAMES)


def _window(raw: bytes) -> np.ndarray:
    if len(raw) > hashing.MAX_BYTES:
        raw = raw[:_HEAD_BYTES] + b"\n" + raw[-_TAIL_BYTES:]
    return np.frombuffer(raw, dtype=np.uint8)


def _choice_lines(data: np.ndarray) -> int:
    # Lines like "B. ..." or "C) ...": multiple-choice questions (MMLU-style).
    newlines = np.flatnonzero(data[:-2] == 10)
    if len(newlines) == 0:
        return 0
    letters = data[newlines + 1]
    marks = data[newlines + 2]
    return int(np.count_nonzero((letters >= 65) & (letters <= 69) & ((marks == 46) | (marks == 41))))


class Featurizer:
    """Computes ``RequestFeatures``; stateless after construction, so safe to share across threads."""

    def __init__(self, config: FeatureConfig | None = None):
        self.config = config or FeatureConfig()
        bits = self.config.hash_bits
        if not 8 <= bits <= 24:
            raise ValueError(f"hash_bits must be in [8, 24], got {bits}")
        self.n_buckets = 1 << bits

    def __call__(
        self, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None
    ) -> RequestFeatures:
        return self.from_text(from_request(messages=messages, prompt=prompt))

    def from_text(self, text: RequestText) -> RequestFeatures:
        """Features of an already extracted ``RequestText``."""
        return self.assemble(*self.dense_and_buckets(text))

    @staticmethod
    def assemble(dense: np.ndarray, groups: list[np.ndarray]) -> RequestFeatures:
        """RequestFeatures from ``dense_and_buckets`` output."""
        if groups:
            indices = np.concatenate(groups)
            # 1/sqrt(n) per feature type: close to L2 normalisation without counting duplicates.
            values = np.concatenate([np.full(len(g), 1.0 / np.sqrt(len(g)), dtype=np.float32) for g in groups])
        else:
            indices = np.zeros(0, dtype=np.int64)
            values = np.zeros(0, dtype=np.float32)
        return RequestFeatures(dense=dense, indices=indices, values=values)

    def dense_and_buckets(self, text: RequestText) -> tuple[np.ndarray, list[np.ndarray]]:
        """Dense features, and one array of bucket ids per non-empty hashed feature type.

        Every bucket of a group has the value 1/sqrt(len(group)); the classifier's fast path
        uses that to score without materialising ``RequestFeatures.values``.
        """
        dense, groups, _ = self.analyse(text)
        return dense, groups

    def analyse(self, text: RequestText) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """``dense_and_buckets`` plus the word hashes (uint64) of the hashed window, which the
        static embedding (policies/embedding.py) looks up without hashing the text again."""
        cfg = self.config
        encoded = text.user.encode("utf-8", "replace")
        raw = _window(encoded)
        data = hashing.lower_bytes(raw)
        n_bytes = max(len(raw), 1)
        sums = hashing.prefix_sums(data)
        starts, ends = hashing.word_spans(data)
        words = hashing.word_hashes(sums, starts, ends)

        hashed = []
        if cfg.word_unigrams:
            hashed.append((words, 1))
        if cfg.word_bigrams:
            hashed.append((hashing.bigram_hashes(words), 2))
        for n in cfg.char_ngrams:
            hashed.append((hashing.char_ngram_hashes(sums, n), 10 + n))
        groups = [hashing.buckets(h, salt, cfg.hash_bits) for h, salt in hashed if len(h)]

        # Counts over the window are scaled up by how much longer the whole prompt is.
        scale = len(encoded) / n_bytes if len(encoded) > len(raw) else 1.0
        return self._dense(text, raw, words, starts, ends, n_bytes, scale), groups, words

    def _dense(self, text, raw, words, starts, ends, n_bytes, scale) -> np.ndarray:
        classes = (np.bincount(raw, minlength=256) @ _BYTE_CLASSES).tolist()
        n_words = len(words)
        letters = max(classes[_UPPER] + classes[_LOWER], 1.0)

        if n_words:
            idx = np.searchsorted(_MARKER_HASHES, words)
            idx[idx >= len(_MARKER_HASHES)] = 0
            hit = _MARKER_HASHES[idx] == words
            markers = np.bincount(_MARKER_CATEGORY[idx[hit]], minlength=len(_MARKER_CATEGORIES)).tolist()
            first = raw[starts]
            numbers = int(np.count_nonzero((first >= 48) & (first <= 57)))
            mean_word_len = float((ends - starts).mean())
            type_token = len(np.unique(words)) / n_words
        else:
            markers = [0] * len(_MARKER_CATEGORIES)
            numbers, mean_word_len, type_token = 0, 0.0, 0.0

        user = text.user
        profile = tokens.token_profile(user)
        log1p = math.log1p
        values = [
            log1p(len(user)),
            log1p(profile.count),
            len(user) / max(profile.count, 1.0),
            profile.mean_log_rank,
            profile.rare_share,
            log1p(n_words * scale),
            log1p(user.count("\n")),
            log1p(text.user_turns),
            float(text.has_system),
            log1p(text.context_chars),
            log1p(len(text.last_user)),
            classes[_DIGIT] / n_bytes,
            classes[_UPPER] / letters,
            classes[_NON_ASCII] / n_bytes,
            classes[_PUNCT] / n_bytes,
            classes[_CODE_PUNCT] / n_bytes,
            classes[_MATH_OP] / n_bytes,
            log1p(classes[_LATEX] * scale),
            log1p(user.count("```")),
            log1p(classes[_QUESTION] * scale),
            float(user.rstrip().endswith("?")),
            log1p(_choice_lines(raw)),
            log1p(numbers * scale),
            mean_word_len,
            type_token,
            *(log1p(m * scale) for m in markers),
        ]
        return np.asarray(values, dtype=np.float32)


_default_featurizer: Featurizer | None = None


def featurize(messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None) -> RequestFeatures:
    """Features of a request with the default ``FeatureConfig``."""
    global _default_featurizer
    if _default_featurizer is None:
        _default_featurizer = Featurizer()
    return _default_featurizer(messages=messages, prompt=prompt)
