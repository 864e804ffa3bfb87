"""Per-client cost budgets: token buckets of cost units, bounded in memory."""

from __future__ import annotations

from inventory_graphql.api.cost_budget import CostBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_spends_its_burst_then_its_rate() -> None:
    clock = Clock()
    budget = CostBudget(rate=100, burst=1000, clock=clock)
    assert budget.spend("a", 600) is None
    assert budget.spend("a", 400) is None
    over = budget.spend("a", 50)
    assert over is not None and over.retry_after == 0.5  # 50 units at 100 a second
    assert "costs 50" in over.message and "retry in 0.5 s" in over.message
    assert budget.refused == 1
    clock.now += 0.5
    assert budget.spend("a", 50) is None
    assert budget.spend("a", 1) is not None


def test_a_refusal_spends_nothing() -> None:
    clock = Clock()
    budget = CostBudget(rate=100, burst=1000, clock=clock)
    assert budget.spend("a", 900) is None
    for _ in range(10):
        assert budget.spend("a", 200) is not None
    clock.now += 1  # 100 + 100 units: exactly what the next one needs
    assert budget.spend("a", 200) is None


def test_clients_have_buckets_of_their_own() -> None:
    budget = CostBudget(rate=100, burst=1000, clock=Clock())
    assert budget.spend("attacker", 1000) is None
    assert budget.spend("attacker", 1) is not None
    assert budget.spend("shopper", 1000) is None


def test_an_operation_costlier_than_the_burst_runs_on_a_full_bucket_only() -> None:
    clock = Clock()
    budget = CostBudget(rate=100, burst=1000, clock=clock)
    assert budget.spend("a", 3000) is None  # full: runs, and leaves 2,000 of debt
    over = budget.spend("a", 3000)
    assert over is not None and over.retry_after == 30  # back to full: 3,000 units
    clock.now += 29.9
    assert budget.spend("a", 3000) is not None
    clock.now += 0.1
    assert budget.spend("a", 3000) is None


def test_a_rate_of_zero_is_no_budget() -> None:
    budget = CostBudget(rate=0, burst=1, clock=Clock())
    assert all(budget.spend("a", 10**9) is None for _ in range(100))
    assert budget.clients == 0


def test_full_buckets_are_forgotten_and_entries_are_bounded() -> None:
    clock = Clock()
    budget = CostBudget(rate=100, burst=1000, clock=clock, max_clients=50)
    for i in range(200):  # rotating addresses
        budget.spend(f"10.0.0.{i}", 500)
    assert budget.clients == 50  # the least recently used went first
    assert budget.spend("10.0.0.199", 500) is None and budget.spend("10.0.0.199", 1) is not None
    clock.now += 10  # every bucket is full again: forgotten, as a new client would be
    assert budget.clients == 0


def test_after_a_refusal_the_client_waits_for_what_it_wanted() -> None:
    clock = Clock()
    budget = CostBudget(rate=100, burst=1000, clock=clock)
    assert budget.wait("a") == 0  # nothing refused: nothing to wait for
    assert budget.spend("a", 1000) is None
    assert budget.wait("a") == 0
    assert budget.spend("a", 300) is not None
    assert budget.wait("a") == 3  # until 300 units are back
    clock.now += 1
    assert budget.wait("a") == 2
    clock.now += 2
    assert budget.wait("a") == 0
    assert budget.spend("a", 300) is None
    assert budget.wait("a") == 0  # spent: what it wanted is forgotten
