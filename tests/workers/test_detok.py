"""Stop strings and partial characters are held back until they are safe to send."""

from workers.detok import StopTextStream


class CharTokenizer:
    """Each token id is one byte of UTF-8; decoding replaces incomplete characters like HF does."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def feed(stream, text):
    out = []
    for b in text.encode():
        out.append(stream.push(b))
        if stream.stopped:
            break
    return out


def test_text_before_a_stop_string_is_sent_and_the_stop_string_never():
    s = StopTextStream(CharTokenizer(), ["END"])
    out = feed(s, "hello ENDworld")
    assert "".join(out) == "hello "
    assert s.stopped


def test_a_partial_stop_match_is_held_then_released():
    s = StopTextStream(CharTokenizer(), ["END"])
    out = feed(s, "xEN")
    assert "".join(out) == "x"
    out += feed(s, "Dy") if False else feed(s, "y")
    assert "".join(out) == "xENy"


def test_incomplete_utf8_is_held_back():
    s = StopTextStream(CharTokenizer(), [])
    first = s.push("é".encode()[0])
    assert first == ""
    assert s.push("é".encode()[1]) == "é"


def test_flush_returns_what_was_held():
    s = StopTextStream(CharTokenizer(), ["ENDING"])
    assert "".join(feed(s, "abEND")) == "ab"
    assert s.flush() == "END"


def test_streamed_text_equals_decoding_the_whole_answer_with_a_real_tokenizer(zoo_dir):
    """Only a window of recent tokens is decoded per token; what it streams must still be exactly
    the whole answer's text (spaces, merges, multi-byte characters split over tokens)."""
    import random

    from workers.weights import load_tokenizer

    tokenizer = load_tokenizer(str(zoo_dir / "mux-2m"))
    rng = random.Random(0)
    samples = ["The quick brown fox — naïve café, 日本語のテキスト 🙂 and code: def f(x): return x**2",
               "  leading spaces\n\nnew lines\tand tabs  ", "émigré ünïcödé ÆØÅ"]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for ids_case in (ids, [rng.randrange(tokenizer.vocab_size) for _ in range(200)]):
            stream = StopTextStream(tokenizer, [])
            streamed = "".join(stream.push(i) for i in ids_case) + stream.flush()
            assert streamed == tokenizer.decode(ids_case, skip_special_tokens=True)


def test_a_metaspace_tokenizer_keeps_its_spaces_when_streamed():
    """Sentencepiece-style tokenizers (Llama, Mistral) drop the leading space of a text they decode
    alone; decoding one token at a time without context would glue words together."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, streaming text one token at a time"] * 20
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw)
    ids = tokenizer.encode("hello world the quick fox", add_special_tokens=False)
    assert len(ids) > 4
    stream = StopTextStream(tokenizer, [])
    streamed = "".join(stream.push(i) for i in ids) + stream.flush()
    assert streamed == tokenizer.decode(ids, skip_special_tokens=True) == "hello world the quick fox"


def _reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """What a stream must send of `text` fed a character at a time: at the first character that
    completes a stop string, the text before the earliest stop string in it; else everything."""
    for i in range(1, len(text) + 1):
        hits = [j for j in (text[:i].find(s) for s in stops) if j >= 0]
        if hits:
            return text[:min(hits)], True
    return text, False


def _held_reference(text: str, stops: list[str]) -> int:
    """The longest suffix of `text` that is a proper prefix of a stop string (by brute force)."""
    return max((n for n in range(1, len(text) + 1) for s in stops if len(s) > n and s.startswith(text[-n:])),
               default=0)


def test_stop_matching_agrees_with_brute_force_on_overlapping_repetitive_strings():
    """Self-overlapping stop strings ('aab' in 'aaab', 'abab' in 'ababab') are where an
    incremental matcher can go wrong: what is sent and held back after every token matches a
    brute-force search over the whole text."""
    import random

    rng = random.Random(7)
    for _ in range(400):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        stream = StopTextStream(CharTokenizer(), stops)
        sent = ""
        for i, b in enumerate(text.encode(), 1):
            sent += stream.push(b)
            if stream.stopped:
                break
            assert sent == text[:i][:i - _held_reference(text[:i], stops)], (stops, text[:i])
        sent += stream.flush()
        assert (sent, stream.stopped) == _reference(text, stops), (stops, text)


def test_a_stop_string_of_the_longest_allowed_length_is_found_and_held():
    from gateway.http.openai_api import MAX_STOP_CHARS

    stop = "ab" * (MAX_STOP_CHARS // 2)
    s = StopTextStream(CharTokenizer(), [stop])
    out = feed(s, "x" + stop[:-1])
    assert "".join(out) == "x" and not s.stopped  # all but the last character could still be the stop
    out += feed(s, stop[-1] + "tail")
    assert "".join(out) == "x" and s.stopped
