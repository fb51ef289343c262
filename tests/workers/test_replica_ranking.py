"""The replica ranking the pool's request router applies (workers/replica_ranking.py), on fake
replicas: where a request for a model goes, and when a hot model goes to a second replica."""

from types import SimpleNamespace

from workers.replica_ranking import SpreadPolicy, rank_replicas

GB = 10**9


def replica(name, **stats):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name), routing_stats=stats)


def holder(name, model="hot", waiting=0, **stats):
    """A replica holding `model` (2 GB reserved) with 8 of its requests running and `waiting` more."""
    stats.setdefault("in_flight", waiting + 8)
    return replica(name, resident=[model], reserved={model: 2 * GB}, in_flight_by_model={model: waiting + 8},
                   waiting={model: waiting} if waiting else {}, free_bytes=stats.pop("free_bytes", GB), **stats)


def spare(name, free_bytes=10 * GB, **stats):
    return replica(name, resident=["other"], free_bytes=free_bytes, **stats)


def ids(groups):
    return [[r.replica_id.unique_id for r in group] for group in groups]


def never(_replica):
    return False


def test_holders_come_first_least_busy_first_then_the_replica_with_most_room():
    groups = rank_replicas("hot", [spare("c", free_bytes=GB), holder("a", in_flight=9), spare("d"),
                                   holder("b", in_flight=2)], never)
    assert ids(groups) == [["b", "a"], ["d", "c"]]


def test_a_holder_keeping_up_keeps_its_model_to_itself():
    assert ids(rank_replicas("hot", [holder("a", waiting=4), spare("b")], never)) == [["a"], ["b"]]


def test_a_flooded_holder_shares_its_model_with_a_replica_that_has_room():
    assert ids(rank_replicas("hot", [holder("a", waiting=5), spare("b")], never)) == [["a", "b"]]


def test_a_model_paused_on_its_holder_goes_to_a_replica_with_room():
    assert ids(rank_replicas("hot", [holder("a", paused=["hot"]), spare("b")], never)) == [["a", "b"]]


def test_a_model_whose_requests_keep_another_models_load_waiting_goes_to_a_replica_with_room():
    flooded = holder("a", blocked_loads=["cold"])
    assert ids(rank_replicas("hot", [flooded, spare("b")], never)) == [["a", "b"]]


def test_no_spread_to_a_replica_without_room_for_the_model():
    too_small = spare("b", free_bytes=GB)  # the model reserves 2 GB
    waiting_for_room = spare("c", blocked_loads=["x"])
    pausing = spare("d", paused=["y"])
    groups = rank_replicas("hot", [holder("a", waiting=50), too_small, waiting_for_room, pausing], never)
    assert ids(groups)[0] == ["a"]


def test_idle_models_count_as_room_busy_ones_do_not():
    idle = spare("b", free_bytes=GB, idle_bytes=GB)
    busy = spare("c", free_bytes=GB, in_flight=3)
    assert ids(rank_replicas("hot", [holder("a", waiting=9), busy, idle], never))[0] == ["a", "b"]


def test_no_spread_while_one_holder_keeps_up():
    groups = rank_replicas("hot", [holder("a", waiting=50), holder("b"), spare("c")], never)
    assert ids(groups) == [["b", "a"], ["c"]]


def test_every_holder_flooded_adds_one_replica_not_all():
    groups = rank_replicas("hot", [holder("a", waiting=9), holder("b", waiting=9), spare("c"), spare("d", in_flight=3)],
                           never)
    assert ids(groups) == [["a", "b", "c"], ["d"]]


def test_the_replica_already_loading_the_model_is_its_only_helper():
    loading = spare("b", loading=["hot"], free_bytes=0, in_flight=20)
    groups = rank_replicas("hot", [holder("a", waiting=9), loading, spare("c")], never)
    assert ids(groups) == [["a", "b"], ["c"]]


def test_the_flood_keeps_going_to_the_replica_it_was_just_sent_to():
    """Affinity: stats lag the routing, so the replica just sent the model shows nothing yet."""
    just_sent = spare("c", free_bytes=5 * GB, in_flight=4)
    groups = rank_replicas("hot", [holder("a", waiting=9), spare("b"), just_sent],
                           lambda r: r.replica_id.unique_id == "c")
    assert ids(groups) == [["a", "c"], ["b"]]


def test_a_session_stays_on_its_home_replica_even_when_it_is_flooded():
    groups = rank_replicas("hot", [holder("a", waiting=9), holder("b", waiting=9), spare("c")], never,
                           session_home="b")
    assert ids(groups) == [["b"], ["a"], ["c"]]


def test_spreading_can_be_turned_off_and_the_threshold_set():
    flooded = [holder("a", waiting=9), spare("b")]
    assert ids(rank_replicas("hot", flooded, never, spread=SpreadPolicy(enabled=False))) == [["a"], ["b"]]
    assert ids(rank_replicas("hot", flooded, never, spread=SpreadPolicy(hot_waiting=20))) == [["a"], ["b"]]
    assert ids(rank_replicas("hot", [holder("a", waiting=2), spare("b")], never,
                             spread=SpreadPolicy(hot_waiting=1))) == [["a", "b"]]


def test_replicas_without_stats_yet_are_neither_hot_nor_roomy():
    assert ids(rank_replicas("hot", [holder("a", waiting=9), replica("b")], never)) == [["a"], ["b"]]
    assert ids(rank_replicas("hot", [replica("a"), replica("b")], never)) == [["a", "b"]]
