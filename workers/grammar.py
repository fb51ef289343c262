"""Grammar-constrained decoding with xgrammar: a per-row token mask on the logits seam.

A request with `response_format` json_object / json_schema, or with tools the model may call, gets
a grammar: compiled once per (tokenizer, grammar) and kept in an LRU, then one `GrammarMatcher` per
sequence. Each step the matcher fills that row's token bitmask (the tokens that keep the output
a prefix of some valid answer) and the masked row goes to the sampler; the sampled token advances
the matcher. A stop token is allowed only where the grammar accepts, so an answer that ends on
its own ends valid; one cut by max_tokens ends with "length".

Why xgrammar (over llguidance): its per-token masks come from an adaptive cache computed at
compile time, so filling a mask is microseconds on the CPU (measured in
loadtests/structured_bench.py), it compiles JSON Schema and OpenAI-style tool-call "structural
tags" itself, its matcher is forkable and supports rollback (speculative verification later),
and it is what vLLM, SGLang and TensorRT-LLM ship as their default structured-output backend.

Two things are rewritten in xgrammar's output (0.2.9) before compiling:
- whitespace: grammars are compiled compact (`{"a": 1, "b": [2, 3]}`, any_whitespace=False);
  a model free to emit whitespace between tokens can spend its whole budget there (a random model
  does), and the compact form is what json.dumps writes;
- strings with maxLength/minLength: xgrammar's bounded-string rule is `[^"\\\r\n]`, which admits
  raw control characters (U+0000-U+001F), invalid inside JSON strings (json.loads rejects
  them); the rule is replaced with JSON's own `[^\0-\x1f"\\]`.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from workers.types import GenerationRequest, PoolError

GRAMMAR_CACHE_ENTRIES = 256
_BOUNDED_CHAR = '[^\\"\\\\\\r\\n]'  # as xgrammar prints it
_JSON_CHAR = '[^\\0-\\x1f\\"\\\\]'


class InvalidGrammar(PoolError):
    """A schema or tool list that the grammar compiler cannot turn into a grammar."""

    status = 400
    code = "invalid_request_error"


@dataclass(frozen=True)
class GrammarSpec:
    """What to compile: `kind` names the constraint (reported as GenerationChunk.constrained),
    `key` is its canonical JSON (the cache key), `build` makes its EBNF."""

    kind: str
    key: str

    @property
    def param(self) -> str:
        """The request field an error about this grammar names."""
        return "tools" if self.kind == "tool_call" else "response_format"

    def ebnf(self) -> str:
        spec = json.loads(self.key)
        if self.kind == "tool_call":
            from workers.tool_format import tool_call_ebnf

            return tool_call_ebnf(spec["tools"], spec["mode"], spec["parallel"])
        return json_ebnf(spec)


def json_ebnf(schema: dict) -> str:
    """Compact, JSON-valid EBNF for a JSON Schema (see the module docstring for the rewrites)."""
    import xgrammar as xgr

    try:
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    except Exception as exc:  # the compiler's own message names what it could not handle
        raise InvalidGrammar(f"this JSON schema cannot be enforced: {exc}") from exc
    return str(grammar).replace(_BOUNDED_CHAR, _JSON_CHAR)


def grammar_spec(req: GenerationRequest) -> GrammarSpec | None:
    """The grammar a request needs, or None. Tools (unless tool_choice is "none") take precedence
    over response_format; see workers/tool_format.py for the call format."""
    from workers.tool_format import tool_mode

    mode = tool_mode(req)
    if mode is not None:
        tools = [t["function"] for t in req.tools]
        if isinstance(req.tool_choice, dict):
            name = req.tool_choice["function"]["name"]
            tools = [t for t in tools if t["name"] == name]
        spec = {"tools": [{"name": t["name"], "parameters": t.get("parameters") or {"type": "object"}} for t in tools],
                # a named tool is called once (as OpenAI does); otherwise parallel unless turned off
                "mode": mode, "parallel": mode != "named" and req.parallel_tool_calls is not False}
        return GrammarSpec("tool_call", _canonical(spec))
    fmt = req.response_format or {}
    if fmt.get("type") == "json_object":
        return GrammarSpec("json_object", _canonical({"type": "object"}))
    if fmt.get("type") == "json_schema":
        return GrammarSpec("json_schema", _canonical(fmt["json_schema"].get("schema") or {}))
    return None


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class TokenizerGrammars:
    """Everything grammar-related for one model's tokenizer: xgrammar's tokenizer info and
    compiler (built on first use: a large vocabulary takes a while), and the LRU of compiled
    grammars. Thread-safe: requests compile from the event loop's worker threads."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: set[int], max_entries: int = GRAMMAR_CACHE_ENTRIES):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_ids = sorted(stop_ids)
        self._max_entries = max_entries
        self._compiled: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self._info = None
        self._compiler = None

    @property
    def info(self):
        import xgrammar as xgr

        with self._lock:
            if self._info is None:
                self._info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size,
                                                                stop_token_ids=self._stop_ids)
                self._compiler = xgr.GrammarCompiler(self._info, max_threads=1)
            return self._info

    def cached(self, spec: GrammarSpec):
        """The compiled grammar if it is in the cache (a use: moves it to the LRU's end), else None."""
        with self._lock:
            found = self._compiled.get((spec.kind, spec.key))
            if found is not None:
                self._compiled.move_to_end((spec.kind, spec.key))
            return found

    def compile(self, spec: GrammarSpec):
        """The compiled grammar for `spec`, compiling it on a miss. Raises InvalidGrammar."""
        import xgrammar as xgr

        found = self.cached(spec)
        if found is not None:
            return found
        self.info  # noqa: B018  (builds the compiler)
        try:
            compiled = self._compiler.compile_grammar(xgr.Grammar.from_ebnf(spec.ebnf()))
        except InvalidGrammar as exc:
            raise InvalidGrammar(exc.message, param=spec.param) from exc
        except Exception as exc:
            raise InvalidGrammar(f"the {spec.kind} constraint cannot be compiled: {exc}", param=spec.param) from exc
        with self._lock:
            self._compiled[(spec.kind, spec.key)] = compiled
            while len(self._compiled) > self._max_entries:
                self._compiled.popitem(last=False)
        return compiled

    def token_bytes(self) -> list[bytes]:
        """Each token id's bytes (for logprob entries)."""
        return self.info.decoded_vocab


class GrammarMask:
    """A sequence's matcher as a logits processor: masks what the grammar forbids, advances on
    the sampled token. `terminated`: the matcher accepted a stop token (the answer is complete)."""

    def __init__(self, compiled, vocab_size: int, kind: str):
        import xgrammar as xgr

        self.kind = kind
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def apply(self, logits: torch.Tensor) -> None:
        import xgrammar as xgr

        if self.matcher.fill_next_token_bitmask(self.bitmask):
            xgr.apply_token_bitmask_inplace(logits[None], self.bitmask, vocab_size=self.vocab_size)

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):  # only when the mask was not applied (a bug)
            raise RuntimeError(f"token {token} is not allowed by the {self.kind} grammar")

    @property
    def terminated(self) -> bool:
        return self.matcher.is_terminated()

    @property
    def completed(self) -> bool:
        return self.matcher.is_completed()
