"""The prefix cache on its own: longest match, LRU by bytes, superseded entries, sessions."""

import torch

from workers.prefix_cache import PrefixCache


def kv(n: int) -> torch.Tensor:
    """A fake [layers, 2, heads, n, dim] KV whose position i holds the value i (to check slicing)."""
    return torch.arange(n, dtype=torch.float32).view(1, 1, 1, n, 1).expand(2, 2, 1, n, 3).contiguous()


def nbytes(n: int) -> int:
    return kv(n).numel() * 4


def test_finds_the_longest_prefix_even_mid_block():
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    a = list(range(100, 110))  # 10 tokens: two full blocks and a half
    cache.insert(a, kv(10))
    hit, tensor = cache.lookup(a[:9] + [7, 7, 7])
    assert hit == 9
    assert tensor[0, 0, 0, :hit, 0].tolist() == list(range(9))
    assert cache.lookup(a + [1, 2, 3])[0] == 10
    assert cache.lookup([1, 2, 3, 4, 5, 6])[0] == 0  # nothing shared
    assert cache.lookup(a[:3])[0] == 0  # shorter than one block: not worth a lookup


def test_limit_caps_the_match():
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    a = list(range(12))
    cache.insert(a, kv(12))
    assert cache.lookup(a, limit=11)[0] == 11
    assert cache.match_length(a) == 12


def test_an_entry_that_extends_another_replaces_it():
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    first = list(range(8))
    cache.insert(first, kv(8))
    cache.insert(first + [50, 51, 52, 53, 54], kv(13))
    assert len(cache) == 1 and cache.nbytes == nbytes(13)
    assert cache.lookup(first + [9])[0] == 8


def test_least_recently_used_entries_go_first_when_over_budget():
    cache = PrefixCache(max_bytes=2 * nbytes(8), block=4)
    a, b, c = [list(range(s, s + 8)) for s in (0, 100, 200)]
    cache.insert(a, kv(8))
    cache.insert(b, kv(8))
    assert cache.lookup(a + [1])[0] == 8  # touch a: b is now the oldest
    cache.insert(c, kv(8))
    assert cache.match_length(a) == 8 and cache.match_length(c) == 8
    assert cache.match_length(b) == 0
    assert cache.nbytes == 2 * nbytes(8)


def test_entries_sharing_a_prefix_are_both_found():
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    base = list(range(8))
    cache.insert(base + [1, 1, 1, 1], kv(12))
    cache.insert(base + [2, 2, 2, 2], kv(12))
    assert cache.match_length(base + [1, 1, 1, 1, 9]) == 12
    assert cache.match_length(base + [2, 2, 2, 2, 9]) == 12
    assert cache.match_length(base + [3]) == 8


def test_disabled_or_oversized_entries_are_not_kept():
    assert len(_filled(PrefixCache(max_bytes=0, block=4))) == 0
    assert len(_filled(PrefixCache(max_bytes=nbytes(8) - 1, block=4))) == 0


def _filled(cache: PrefixCache) -> PrefixCache:
    cache.insert(list(range(8)), kv(8))
    return cache


def test_a_salt_keeps_entries_apart_even_for_the_same_tokens():
    cache = PrefixCache(max_bytes=1 << 20, block=4)
    a = list(range(100, 112))
    cache.insert(a, kv(12), salt="team-a")
    assert cache.lookup(a + [1], salt="team-a")[0] == 12
    assert cache.lookup(a + [1], salt="team-b")[0] == 0
    assert cache.lookup(a + [1])[0] == 0  # unsalted requests do not see salted entries either
    assert cache.match_length(a, salt="team-b") == 0 and cache.match_length(a, salt="team-a") == 12
    cache.insert(a + [5, 6, 7, 8], kv(16), salt="team-b")  # extends the tokens, not team-a's entry
    assert len(cache) == 2 and cache.lookup(a, salt="team-a")[0] == 12
