"""Weighted fair queuing on its own: backlogged teams are served in proportion to their weights,
a newcomer is not put behind a flood, and a team over its share still progresses."""

from workers.fair_queue import FairQueue


def serve(queue: FairQueue, n: int) -> list:
    served = []
    for _ in range(n):
        item = next(iter(queue))
        queue.take(item)
        served.append(item)
    return served


def backlog(queue: FairQueue, n: int, **teams) -> None:
    """`n` requests of cost 10 per team, interleaved; teams={label: (team id, push keywords)}."""
    for i in range(n):
        for label, (team, kw) in teams.items():
            queue.push((label, i), team, cost=10, **kw)


def test_backlogged_teams_are_served_in_proportion_to_their_weights():
    queue = FairQueue()
    backlog(queue, 60, a=("a", {}), b=("b", {"weight": 3.0}))
    first = serve(queue, 40)
    assert sum(team == "b" for team, _ in first) == 30  # 3:1
    assert [i for team, i in first if team == "a"] == list(range(10))  # each team's own order kept


def test_a_newcomer_goes_before_a_floods_backlog_and_the_flood_still_progresses():
    queue = FairQueue()
    for i in range(50):
        queue.push(("a", i), "a", cost=10)
    serve(queue, 5)
    queue.push(("b", 0), "b", cost=10)
    nxt = serve(queue, 2)
    assert ("b", 0) in nxt  # not behind a's 45 queued
    for i in range(50):  # b floods in turn: a, over its share so far, is still served half the time
        queue.push(("b", i + 1), "b", cost=10)
    later = serve(queue, 20)
    assert 8 <= sum(team == "a" for team, _ in later) <= 12


def test_priority_is_a_share_not_a_strict_level():
    queue = FairQueue()
    backlog(queue, 30, low=("t1", {}), high=("t2", {"priority": 1}))
    first = serve(queue, 30)
    assert sum(kind == "low" for kind, _ in first) == 10  # 1 : 2**1, never zero


def test_a_dropped_item_leaves_without_moving_the_clock():
    queue = FairQueue()
    queue.push("x", "a", cost=100)
    queue.push("y", "b", cost=1)
    queue.drop("x")
    assert list(queue) == ["y"] and queue.virtual == 0.0
