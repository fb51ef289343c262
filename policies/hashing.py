"""Vectorised, process-independent hashing of words and character n-grams (the hashing trick).

Python's ``hash()`` is salted per process, and a Python loop over thousands of n-grams costs
milliseconds, so we hash with numpy instead: a polynomial rolling hash over the UTF-8 bytes,
mod 2**64 (uint64 arithmetic wraps), computed for every substring at once from prefix sums.

  S[i]       = sum_{k<i} b[k] * P**k
  hash(s, e) = (S[e] - S[s]) * P**-s   =  sum_{k=s}^{e-1} b[k] * P**(k-s)

P is odd, so it has an inverse mod 2**64 and the hash of a substring does not depend on where
it occurs. A splitmix64 finaliser then spreads the hashes over the buckets.
"""

from __future__ import annotations

import numpy as np

# Bump when any constant or step below changes: weights trained on other buckets are useless.
VERSION = 1

MAX_BYTES = 4096  # longest byte window hashed; the caller keeps head and tail of longer text

_P = 0x100000001B3  # FNV-64 prime: odd
_P_INV = pow(_P, -1, 1 << 64)
_BIGRAM_MUL = np.uint64(0x9E3779B97F4A7C15)
_LENGTH_MUL = np.uint64(0xC2B2AE3D27D4EB4F)


def _powers(base: int, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.uint64)
    value = 1
    for i in range(count):
        out[i] = value
        value = (value * base) & 0xFFFFFFFFFFFFFFFF
    return out


_POW = _powers(_P, MAX_BYTES + 1)
_POW_INV = _powers(_P_INV, MAX_BYTES + 1)

# Bytes that belong to a word: ASCII letters, digits, underscore, and every non-ASCII byte
# (so UTF-8 words in any script stay whole).
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[128:] = True

_ASCII_LOWER = np.arange(256, dtype=np.uint8)
_ASCII_LOWER[65:91] += 32


def lower_bytes(raw: np.ndarray) -> np.ndarray:
    """ASCII-lowercase a uint8 array (non-ASCII bytes unchanged)."""
    return _ASCII_LOWER[raw]


def prefix_sums(data: np.ndarray) -> np.ndarray:
    """S with S[0] = 0 and S[i] = sum_{k<i} data[k] * P**k (mod 2**64); len(data) <= MAX_BYTES."""
    out = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum(data.astype(np.uint64) * _POW[: len(data)], out=out[1:])
    return out


def substring_hashes(sums: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Position-independent polynomial hash of data[starts[i]:ends[i]] for every i."""
    return (sums[ends] - sums[starts]) * _POW_INV[starts]


def word_spans(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of maximal runs of word bytes."""
    padded = np.zeros(len(data) + 2, dtype=np.int8)
    padded[1:-1] = _WORD_BYTE[data]
    edges = padded[1:] - padded[:-1]
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def word_hashes(sums: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash of each word, with its length mixed in so e.g. 'ab' and 'ab\\0' cannot collide."""
    return substring_hashes(sums, starts, ends) ^ ((ends - starts).astype(np.uint64) * _LENGTH_MUL)


def bigram_hashes(words: np.ndarray) -> np.ndarray:
    """Hash of each pair of consecutive words (order-sensitive)."""
    if len(words) < 2:
        return np.zeros(0, dtype=np.uint64)
    return words[:-1] * _BIGRAM_MUL + words[1:]


def char_ngram_hashes(sums: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-n byte window."""
    count = len(sums) - n
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    # Same as substring_hashes with starts = arange(count), but slices instead of gathers.
    return (sums[n:] - sums[:count]) * _POW_INV[:count]


def buckets(hashes: np.ndarray, salt: int, bits: int) -> np.ndarray:
    """Map hashes to [0, 2**bits) with a per-feature-type salt (splitmix64 finaliser)."""
    # Two multiply-xorshift rounds (half of splitmix64's finaliser): the low bits of a
    # polynomial hash are weak, and the high bits of the product mix all of them.
    h = (hashes ^ np.uint64(salt * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
    return (h >> np.uint64(64 - bits)).astype(np.int64)


def stable_word_hash(word: str) -> int:
    """The hash ``word_hashes`` gives a lowercase ASCII word (for keyword tables)."""
    data = np.frombuffer(word.encode("utf-8"), dtype=np.uint8)
    sums = prefix_sums(data)
    return int(word_hashes(sums, np.array([0]), np.array([len(data)]))[0])
