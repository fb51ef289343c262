"""Fair share through a real gateway: the pool's full queue is a 429 with Retry-After for the team
holding it, another team still gets in, and /v1/models advertises the context the pool enforces."""

import threading
import time

import httpx
import openai

from gateway.config import parse_config
from gateway.server import model_specs, pool_options
from gateway.upstreams.backends import InProcessBackend
from gateway.upstreams.remote import RoutedBackends
from support import KEY_ALPHA, KEY_BETA, make_config

NO_EOS = {"2": -100}  # the zoo tokenizer's end of text: the occupant below runs its full length


def test_a_full_pool_queue_is_429_for_the_team_holding_it_and_not_for_another(zoo_dir, start_server):
    config = make_config(zoo_dir, teams=[{"id": "alpha", "share": 1}, {"id": "beta", "share": 1}])
    config["pool"].update(max_queued_requests=1, kv_reserve_tokens=300)
    cfg = parse_config(config)
    # one sequence at a time per model, so a second request waits in the replica's queue
    inprocess = InProcessBackend(model_specs(cfg), **pool_options(cfg), max_running_per_model=1)
    server = start_server(config, RoutedBackends(inprocess))
    pool = inprocess.pool
    alpha = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)
    beta = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_BETA, max_retries=0, timeout=60)

    contexts = {m.id: m.model_extra.get("context_length") for m in alpha.models.list().data}
    assert contexts["mux-2m"] == 300 and contexts["mux-5m"] == 300  # the KV reserve, not the checkpoint's 2048

    occupant = alpha.completions.create(model="mux-2m", prompt="hi", max_tokens=280, logit_bias=NO_EOS,
                                        stream=True)
    next(iter(occupant))  # running: it holds the model's one row
    waiter = threading.Thread(target=lambda: alpha.completions.create(model="mux-2m", prompt="hi", max_tokens=2))
    waiter.start()
    deadline = time.monotonic() + 30
    while pool.stats()["queued_requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    refused = httpx.post(server.base_url + "/v1/completions", headers={"authorization": f"Bearer {KEY_ALPHA}"},
                         json={"model": "mux-2m", "prompt": "hi", "max_tokens": 2}, timeout=60)
    occupant.close()
    answered = beta.completions.create(model="mux-2m", prompt="hi", max_tokens=2)
    waiter.join()
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert answered.choices[0].finish_reason in ("stop", "length")
