"""The cost model and the prompt-token bound admission reserves with."""

from decimal import Decimal

import pytest

from gateway.config import PricingConfig
from gateway.tenancy.costs import CostModel
from gateway.tenancy.estimate import REQUEST_OVERHEAD_TOKENS, prompt_token_bound
from workers.types import GenerationRequest

PRICING = PricingConfig.model_validate({"models": [
    {"model": "small", "input_per_1m_usd": 1.0, "output_per_1m_usd": 2.0},
    {"model": "large", "input_per_1m_usd": 10.0, "output_per_1m_usd": 30.0},
    {"model": "gpu", "gpu_second_usd": 0.5, "reserve_gpu_seconds_per_token": 0.01},
]})


def test_cost_is_tokens_times_prices_rounded_to_the_micro_dollar():
    costs = CostModel.from_config(PRICING)
    assert costs.cost("small", 1_000_000, 0) == Decimal("1.000000")
    assert costs.cost("large", 100, 10) == Decimal("0.001300")
    assert costs.cost("gpu", 100, 10, gpu_seconds=0.25) == Decimal("0.125000")
    assert costs.cost("unpriced", 10**6, 10**6, gpu_seconds=9) == Decimal("0")


def test_baseline_is_the_most_expensive_model_unless_configured():
    costs = CostModel.from_config(PRICING)
    assert costs.baseline_model == "large"
    assert costs.baseline_cost("small", 100, 10) == costs.cost("large", 100, 10)
    # a request served by the baseline itself saves nothing
    assert costs.baseline_cost("large", 7, 3) == costs.cost("large", 7, 3)
    chosen = PricingConfig.model_validate({**PRICING.model_dump(), "baseline_model": "small"})
    assert CostModel.from_config(chosen).baseline_model == "small"
    assert CostModel.from_config(PricingConfig()).baseline_model is None


def test_baseline_model_must_have_a_price():
    with pytest.raises(ValueError, match="baseline_model"):
        PricingConfig.model_validate({"models": [], "baseline_model": "ghost"})


def test_worst_case_is_prompt_bound_plus_max_tokens_within_the_context():
    costs = CostModel.from_config(PRICING)
    wc = costs.worst_case("large", prompt_bound=100, max_tokens=50, context_length=2048)
    assert wc.tokens == 150
    assert wc.cost_usd == costs.cost("large", 100, 50)
    # the context caps prompt + completion; output tokens are pricier, so they fill it first
    capped = costs.worst_case("large", prompt_bound=5000, max_tokens=100, context_length=1000)
    assert capped.tokens == 1000
    assert capped.cost_usd == costs.cost("large", 900, 100)
    # any split of the context that the engine would accept costs at most the worst case
    for p in range(0, 1001, 50):
        c = min(100, 1000 - p)
        assert costs.cost("large", p, c) <= capped.cost_usd


def test_worst_case_of_n_choices_pays_the_prompt_once_and_each_completion():
    costs = CostModel.from_config(PRICING)
    three = costs.worst_case("large", prompt_bound=100, max_tokens=50, context_length=2048, choices=3)
    assert (three.tokens, three.cost_usd) == (250, costs.cost("large", 100, 150))
    # each choice is capped by the context on its own (they share the prompt, not the window)
    capped = costs.worst_case("large", prompt_bound=5000, max_tokens=100, context_length=1000, choices=2)
    assert (capped.tokens, capped.cost_usd) == (1100, costs.cost("large", 900, 200))


def test_worst_case_includes_the_gpu_allowance_and_rounds_up():
    costs = CostModel.from_config(PRICING)
    wc = costs.worst_case("gpu", prompt_bound=90, max_tokens=10, context_length=None)
    assert wc.tokens == 100
    assert wc.cost_usd == Decimal("0.500000")  # 100 tokens * 0.01 s * $0.5
    tiny = CostModel.from_config(PricingConfig.model_validate(
        {"models": [{"model": "m", "input_per_1m_usd": 0.3}]}))
    assert tiny.worst_case("m", 1, 0, None).cost_usd == Decimal("0.000001")  # 0.0000003 rounded up


def test_worst_case_over_fallbacks_takes_the_dearest_candidate():
    costs = CostModel.from_config(PRICING)
    both = costs.worst_case_any(["small", "large"], 10, 10, lambda m: 2048)
    assert both.cost_usd == costs.worst_case("large", 10, 10, 2048).cost_usd


def _zoo_tokenizer(zoo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(zoo_dir / "mux-2m"))


TEXTS = ["Hello!", "", " ", "a" * 500, "日本語のテキストと絵文字 🎉🎉", "def f(x):\n    return x ** 2\n",
         "\x00\x01 control", "ÅÄÖ åäö " * 40, "https://example.com/?q=1&r=2 " * 10]


@pytest.mark.parametrize("text", TEXTS)
def test_prompt_bound_is_never_below_the_real_token_count(zoo_dir, text):
    tok = _zoo_tokenizer(zoo_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    templated = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_tokens = len(tok(templated, add_special_tokens=False)["input_ids"])
    assert prompt_token_bound(GenerationRequest("r", messages=messages)) >= chat_tokens
    raw_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    assert prompt_token_bound(GenerationRequest("r", prompt=text)) >= raw_tokens
    assert prompt_token_bound(GenerationRequest("r", prompt=text)) == len(text.encode()) + REQUEST_OVERHEAD_TOKENS
