"""`muxgate export distill`: the large tier's answers on a team's routed and shadowed traffic as
chat fine-tuning JSONL for the small model (OpenAI's format: one `{"messages": [...]}` per line,
the request's messages then the large tier's answer as the assistant turn).

Only for teams that store prompts (`teams[].store_prompts: true`): without the text there is
nothing to export, and a team that did not opt in is refused. A request is exported when the
large tier's answer is known (it answered the client, or a shadow evaluation ran it) and scored
at least ``min_score``: its shadow judge's score of the large answer, else (routed large) the
team's own feedback score.
"""

from __future__ import annotations

import json
import time

from gateway.http.errors import BadRequest
from gateway.store import RoutedRequest, Store

DEFAULT_MIN_SCORE = 0.5
MAX_EXAMPLES = 1_000_000  # requests read per export; narrow --from/--to beyond it


def large_scores(outcomes) -> dict[str, float]:
    """Per request, the large tier's score: a shadow judge's wins over feedback."""
    scores: dict[str, tuple[int, float]] = {}
    for o in outcomes:
        if o.large_score is None:
            continue
        rank = 1 if o.source == "shadow" else 0
        if o.request_id not in scores or rank >= scores[o.request_id][0]:
            scores[o.request_id] = (rank, o.large_score)
    return {rid: score for rid, (_, score) in scores.items()}


def example(request: RoutedRequest) -> dict:
    return {"messages": [*request.messages, {"role": "assistant", "content": request.large_answer}]}


async def distill_jsonl(store: Store, team: str, store_prompts: bool, start: float, end: float,
                        min_score: float = DEFAULT_MIN_SCORE) -> tuple[str, int]:
    """(JSONL text, examples) of ``team``'s requests with start <= time < end."""
    if not store_prompts:
        raise BadRequest(f"Team '{team}' does not store prompts (teams[].store_prompts: true in the config), so "
                         "there is no text to export.", param="team")
    if not 0 <= min_score <= 1:
        raise BadRequest("--min-score must be in [0, 1].", param="min_score")
    # outcomes come after their requests (feedback may come days later): read them up to now
    scores = large_scores(await store.outcomes(start, time.time() + 1, team_id=team))
    lines: list[str] = []
    for request in await store.routed_requests(start, end, team_id=team, limit=MAX_EXAMPLES):
        score = scores.get(request.request_id)
        if request.messages is not None and request.large_answer and score is not None and score >= min_score:
            lines.append(json.dumps(example(request), ensure_ascii=False))
    return "".join(line + "\n" for line in lines), len(lines)
