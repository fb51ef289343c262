"""A policy reload takes the classifier weights it names: a changed `classifier.weights` path, or
the same directory rewritten (`muxgate router fit --out DIR`), gives the new classifier, while a
reload that changes nothing else keeps the loaded one (loading costs ~0.3 s)."""

from __future__ import annotations

import dataclasses
import os
import time

import yaml

from policies.classifier import ComplexityClassifier
from policies.policy_router import ReloadingRouter


def weights_copy(directory, marker: str):
    shipped = ComplexityClassifier.shipped()
    dataclasses.replace(shipped, metadata={**shipped.metadata, "marker": marker}).save(directory)
    return str(directory)


def write_policy(path, weights: str | None, threshold: float = 0.5) -> None:
    policy = {"version": 1, "tiers": {"small": ["s"], "large": ["l"]}, "routes": {"default": {"threshold": threshold}}}
    if weights:
        policy["classifier"] = {"weights": weights}
    path.write_text(yaml.safe_dump(policy))
    bump = time.time_ns() + 1_000_000 * (1 + write_policy.calls)  # a new mtime even within one clock tick
    write_policy.calls += 1
    os.utime(path, ns=(bump, bump))


write_policy.calls = 0


def marker(router: ReloadingRouter) -> str | None:
    return router.current.classifier.metadata.get("marker")


def test_a_reload_takes_the_weights_the_policy_names(tmp_path):
    first, second = weights_copy(tmp_path / "w1", "first"), weights_copy(tmp_path / "w2", "second")
    path = tmp_path / "routing.yaml"
    write_policy(path, first)
    router = ReloadingRouter(str(path), {"s", "l"})
    assert marker(router) == "first"
    write_policy(path, second)
    assert router.check_reload() and marker(router) == "second"


def test_weights_rewritten_in_place_are_taken_at_the_next_reload(tmp_path):
    directory = weights_copy(tmp_path / "w", "before")
    path = tmp_path / "routing.yaml"
    write_policy(path, directory)
    router = ReloadingRouter(str(path), {"s", "l"})
    loaded = router.current.classifier
    write_policy(path, directory, threshold=0.6)  # nothing changed for the classifier: kept as loaded
    assert router.check_reload() and router.current.classifier is loaded
    weights_copy(tmp_path / "w", "after")
    meta = tmp_path / "w" / "complexity.json"
    later = time.time_ns() + 5_000_000_000
    os.utime(meta, ns=(later, later))
    write_policy(path, directory)
    assert router.check_reload() and marker(router) == "after"
