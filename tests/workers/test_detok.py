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
