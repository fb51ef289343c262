"""Routing that learns, end to end through real servers on one store: feedback on an adaptive
route's answers reaches the router's learner, the learnt state is saved when the gateway stops and
loaded by the next one, and `muxgate router status` reads the same state."""

from __future__ import annotations

import json

import yaml
from learning_testkit import PAIR, ask, feedback, learning_config, seed_outcomes, stored, wait_routed

from gateway.cli import main
from support import KEY_ALPHA, wait_until


def adaptive_config(tmp_path, zoo_dir) -> dict:
    config = learning_config(tmp_path, zoo_dir)
    policy = tmp_path / "routing.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "tiers": {"small": ["mux-2m"], "large": ["mux-5m"]},
                                      "routes": {"default": {"large_share": 0.5, "adapt": {"embedding": False}}}}))
    return config


def labels_seen(server) -> int:
    return server.app.state.gateway.router.current.adaptive_status()[PAIR]["labels_seen"]


def test_feedback_teaches_the_router_and_the_next_gateway_starts_from_it(tmp_path, zoo_dir, start_server, capsys):
    config = adaptive_config(tmp_path, zoo_dir)
    first = start_server(config)
    for i in range(3):
        answer = ask(first, KEY_ALPHA, f"question number {i}")
        assert answer.model in ("mux-2m", "mux-5m")
        response = feedback(first, KEY_ALPHA, {"request_id": answer.id, "score": i % 2 == 0})
        assert response.status_code == 200, response.text
    assert labels_seen(first) == 3
    wait_routed(config, "alpha", answer.id.removeprefix("chatcmpl-"))
    first.__exit__()  # shutdown saves the learnt state
    second = start_server(config)
    assert labels_seen(second) == 3
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["router", "status", "--config", str(path)])
    status = json.loads(capsys.readouterr().out)
    assert status["pairs"][PAIR]["labels_seen"] == 3 and status["saved_at"] is not None


def wait_labels(server, n: int, timeout_s: float = 20.0) -> None:
    wait_until(lambda: labels_seen(server) == n, timeout_s, every_s=0.1, what=f"{n} labels seen")


def test_a_refit_reaches_a_running_gateway_through_the_store_and_through_hot_reload(tmp_path, zoo_dir, start_server,
                                                                                     capsys):
    import os
    import time

    config = adaptive_config(tmp_path, zoo_dir)
    config["store"]["router_state_save_s"] = 0.2
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(config))
    server = start_server(config)
    assert labels_seen(server) == 0
    seed_outcomes(config, 12)
    main(["router", "fit", "--from-store", "--config", str(path)])  # into the store
    wait_labels(server, 12)  # loaded at the gateway's next tick, not saved over
    seed_outcomes(config, 20)
    refit = tmp_path / "refit"
    main(["router", "fit", "--from-store", "--out", str(refit), "--config", str(path)])
    capsys.readouterr()
    policy = tmp_path / "routing.yaml"
    data = yaml.safe_load(policy.read_text())
    data["classifier"] = {"weights": str(refit)}
    policy.write_text(yaml.safe_dump(data))
    later = time.time_ns() + 2_000_000_000
    os.utime(policy, ns=(later, later))
    wait_labels(server, 20)  # the reloaded policy names the refit: its classifier and its state
    assert server.app.state.gateway.router.current.policy.classifier.weights == str(refit)
    saved = stored(config, lambda s: s.load_router_state())
    assert saved[0]["adaptive"][PAIR]["labels_seen"]["both"] == 20
