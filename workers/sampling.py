"""Next-token sampling: greedy at temperature 0, else temperature + nucleus (top-p)."""

from __future__ import annotations

import torch


def make_generator(seed: int | None) -> torch.Generator:
    """A per-request generator: the same seed gives the same tokens, whatever else runs."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return gen


GREEDY_BELOW = 1e-4  # temperatures this small overflow softmax; they mean greedy anyway


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """Pick one token id from a 1-D logits vector."""
    if temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = cumulative - sorted_probs < top_p
        keep[0] = True  # a top_p so small that nothing qualifies still keeps the top token
        # draw in vocabulary order, not sorted order: a random model's probabilities are near-ties,
        # and float noise from the batch's shape (another kernel, another summation order) would
        # reorder them and send the same seeded draw to another token
        probs = torch.zeros_like(probs).scatter_(0, order, torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs)))
    return int(torch.multinomial(probs.cpu(), 1, generator=gen).item())
