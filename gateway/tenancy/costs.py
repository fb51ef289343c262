"""The cost model: what a request costs, what it could cost at most, and what it would have cost
on the baseline model.

A request's cost is ``prompt * input price + completion * output price + GPU-seconds * GPU price``
(prices per model from the YAML ``pricing:`` section; an unlisted model costs nothing). The
GPU-seconds are the request's share of its replica's busy time, attributed by the engine step by
step in proportion to the tokens each sequence consumed.

Budgets hold because a request is never charged more than it reserved: the reservation is the
worst case over the token counts the model's context allows, plus a GPU-time allowance per
token for models priced by the GPU-second; a request that runs slower than the allowance is
charged the reservation (its GPU-seconds are still recorded in full).

Money is Decimal with micro-dollar precision, exactly as the store keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from gateway.config import PricingConfig
from gateway.store.money import to_usd

_MILLION = Decimal(1_000_000)


def _dec(value: float) -> Decimal:
    return Decimal(str(value))


@dataclass(frozen=True)
class Price:
    """One model's prices, in dollars."""

    input_per_1m: Decimal = Decimal(0)
    output_per_1m: Decimal = Decimal(0)
    gpu_second: Decimal = Decimal(0)
    reserve_gpu_seconds_per_token: Decimal = Decimal(0)

    def raw_cost(self, prompt_tokens: int, completion_tokens: int, gpu_seconds: float) -> Decimal:
        """Unrounded dollars for these counts."""
        tokens = (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / _MILLION
        if not self.gpu_second:  # most models: no GPU-time price (skip a float -> Decimal conversion)
            return tokens
        return tokens + _dec(gpu_seconds) * self.gpu_second


FREE = Price()


@dataclass(frozen=True)
class WorstCase:
    """What admission reserves for one request."""

    tokens: int      # prompt + completion, at most the model's context
    cost_usd: Decimal


class CostModel:
    """Prices per model and the baseline model that savings are measured against."""

    def __init__(self, prices: dict[str, Price], baseline_model: str | None = None):
        self.prices = dict(prices)
        self.baseline_model = baseline_model or self._most_expensive()

    @classmethod
    def from_config(cls, config: PricingConfig) -> CostModel:
        """Build from the YAML ``pricing:`` section."""
        prices = {p.model: Price(_dec(p.input_per_1m_usd), _dec(p.output_per_1m_usd), _dec(p.gpu_second_usd),
                                 _dec(p.reserve_gpu_seconds_per_token)) for p in config.models}
        return cls(prices, config.baseline_model)

    def _most_expensive(self) -> str | None:
        # Ranked by token prices (input + output per 1M): a GPU-second price depends on load, so
        # it cannot rank models on its own.
        def rank(item: tuple[str, Price]) -> Decimal:
            return item[1].input_per_1m + item[1].output_per_1m

        ranked = sorted(self.prices.items(), key=rank)
        return ranked[-1][0] if ranked and rank(ranked[-1]) > 0 else None

    def price(self, model: str) -> Price:
        """The model's prices; an unlisted model is free."""
        return self.prices.get(model, FREE)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, gpu_seconds: float = 0.0) -> Decimal:
        """What these counts cost on ``model``, rounded to the micro-dollar."""
        return to_usd(self.price(model).raw_cost(prompt_tokens, completion_tokens, max(0.0, gpu_seconds)))

    def baseline_cost(self, model: str, prompt_tokens: int, completion_tokens: int,
                      gpu_seconds: float = 0.0) -> Decimal:
        """What the same tokens would have cost on the baseline model.

        The baseline's own GPU time for a request it did not serve is unknown; the routed
        model's GPU-seconds stand in for it (a lower bound, the baseline being the larger model),
        so a request served by the baseline itself shows exactly zero savings.
        """
        baseline = self.baseline_model or model
        return self.cost(baseline, prompt_tokens, completion_tokens, gpu_seconds)

    def worst_case(self, model: str, prompt_bound: int, max_tokens: int | None,
                   context_length: int | None, choices: int = 1) -> WorstCase:
        """The most a request may cost on ``model``.

        Prompt plus completion never exceed the context (the engine refuses such requests), so
        the cost is maximised over {p <= prompt_bound, c <= max_tokens, p + c <= context}: a
        linear function whose maximum is at one of the two corners below. Each of ``choices``
        choices may take c tokens (the prompt is paid once).
        """
        ctx = context_length if context_length and context_length > 0 else None
        max_c = max_tokens if max_tokens is not None else (ctx or 0)
        if ctx is None:
            corners = [(prompt_bound, max_c)]
        else:
            c1 = min(max_c, ctx)
            p2 = min(prompt_bound, ctx)
            corners = [(min(prompt_bound, ctx - c1), c1), (p2, min(max_c, ctx - p2))]
        corners = [(p, c * choices) for p, c in corners]
        price = self.price(model)
        tokens = max(p + c for p, c in corners)
        gpu = tokens * price.reserve_gpu_seconds_per_token if price.gpu_second else Decimal(0)
        cost = max(price.raw_cost(p, c, 0.0) for p, c in corners) + gpu * price.gpu_second
        return WorstCase(tokens=tokens, cost_usd=to_usd(cost, round_up=True))

    def worst_case_any(self, models: Iterable[str], prompt_bound: int, max_tokens: int | None,
                       context_length, choices: int = 1) -> WorstCase:
        """The worst case over several candidate models (the route and its fallbacks).

        ``context_length`` maps a model name to its context (or None when unknown).
        """
        cases = [self.worst_case(m, prompt_bound, max_tokens, context_length(m), choices) for m in models]
        return WorstCase(tokens=max(c.tokens for c in cases), cost_usd=max(c.cost_usd for c in cases))
