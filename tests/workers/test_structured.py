"""Grammar-constrained decoding on random-weight zoo models: every json_schema answer parses and
validates, whatever the model would have said; an answer cut by max_tokens says "length"."""

import asyncio
import json

import jsonschema
import pytest

from workers.grammar import InvalidGrammar, grammar_spec
from workers.types import GenerationRequest

# Strings are bounded: a random model never closes a free string (see issue 16).
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
        },
        "required": ["name", "age", "role"],
    },
    "nested": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": -5, "maximum": 5},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}, "zip": {"type": "string", "maxLength": 5}},
                "required": ["city"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["id", "address", "active"],
    },
    "array": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 4},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 10}, "maxItems": 3},
        },
        "required": ["tags", "scores"],
    },
    "mixed": {
        "type": "object",
        "properties": {
            "kind": {"const": "event"},
            "count": {"type": "integer", "minimum": 10, "maximum": 99},
            "note": {"type": "string", "minLength": 1, "maxLength": 6},
            "items": {"type": "array", "maxItems": 2, "items": {
                "type": "object", "properties": {"k": {"enum": ["a", "b"]}, "v": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["k", "v"]}},
        },
        "required": ["kind", "count", "note", "items"],
    },
}


@pytest.fixture(scope="module")
def engine(engine_2m):
    return engine_2m


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


async def answer(engine, req: GenerationRequest) -> tuple[str, str, str | None]:
    chunks = [c async for c in engine.generate(req)]
    return "".join(c.text for c in chunks), chunks[-1].finish_reason, chunks[-1].constrained


def answers(engine, reqs: list[GenerationRequest]) -> list[tuple[str, str, str | None]]:
    async def go():  # all at once: one batch, as the engine serves them
        return await asyncio.gather(*[answer(engine, r) for r in reqs])
    return asyncio.run(go())


def test_every_seeded_answer_parses_and_validates_against_its_schema(engine):
    reqs, schemas = [], []
    for name, schema in SCHEMAS.items():
        for seed in range(50):
            reqs.append(GenerationRequest(f"{name}-{seed}", messages=[{"role": "user", "content": f"A {name}, please"}],
                                          max_tokens=256, temperature=1.0, seed=seed, response_format=schema_format(schema)))
            schemas.append(schema)
    results = answers(engine, reqs)
    assert len(results) == 200
    for (text, finish, constrained), schema in zip(results, schemas):
        assert finish == "stop" and constrained == "json_schema", text
        jsonschema.validate(json.loads(text), schema)
    assert len({text for text, _, _ in results}) > 150  # seeds give different answers, not one forced text


def test_json_object_gives_an_object(engine):
    reqs = [GenerationRequest(f"o{seed}", prompt="JSON:", max_tokens=256, temperature=1.0, seed=seed,
                              response_format={"type": "json_object"}) for seed in range(8)]
    results = answers(engine, reqs)
    for text, finish, _ in results:
        if finish == "stop":  # a random model may nest forever; when it stops, it is an object
            assert isinstance(json.loads(text), dict)
        else:
            assert finish == "length"
    assert any(finish == "stop" for _, finish, _ in results)


def test_max_tokens_too_small_for_any_valid_answer_ends_with_length(engine):
    fmt = schema_format(SCHEMAS["person"])
    for seed in range(5):
        text, finish, _ = answers(engine, [GenerationRequest("s", prompt="x", max_tokens=5, temperature=1.0, seed=seed,
                                                             response_format=fmt)])[0]
        assert finish == "length"
        with pytest.raises(ValueError):
            jsonschema.validate(json.loads(text), SCHEMAS["person"])


def test_greedy_constrained_answer_is_deterministic_and_unconstrained_rows_beside_it_are_unchanged(engine):
    plain = GenerationRequest("p", prompt="Once upon a time", max_tokens=24, temperature=0)
    alone = answers(engine, [plain])[0][0]
    constrained = [GenerationRequest(f"c{i}", prompt="Once upon a time", max_tokens=64, temperature=0,
                                     response_format=schema_format(SCHEMAS["array"])) for i in range(3)]
    results = answers(engine, [*constrained, plain])
    assert results[-1][0] == alone
    assert len({r[0] for r in results[:3]}) == 1
    jsonschema.validate(json.loads(results[0][0]), SCHEMAS["array"])


def test_a_schema_compiles_once_and_is_then_served_from_the_cache(engine):
    fmt = schema_format({"type": "object", "properties": {"q": {"type": "integer"}}, "required": ["q"]})
    spec = grammar_spec(GenerationRequest("x", prompt="x", response_format=fmt))
    assert engine.grammars.cached(spec) is None
    first = engine.grammars.compile(spec)
    assert engine.grammars.cached(spec) is first
    assert engine.grammars.compile(spec) is first
    # key order in the request does not make another grammar
    same = schema_format({"required": ["q"], "properties": {"q": {"type": "integer"}}, "type": "object"})
    reordered = grammar_spec(GenerationRequest("x", prompt="x", response_format=same))
    assert engine.grammars.cached(reordered) is first


def test_a_schema_the_compiler_cannot_handle_is_a_400(engine):
    bad = schema_format({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}, "required": ["a"]})
    with pytest.raises(InvalidGrammar) as info:
        answers(engine, [GenerationRequest("b", prompt="x", max_tokens=8, response_format=bad)])
    assert info.value.status == 400 and info.value.details["param"] == "response_format"
