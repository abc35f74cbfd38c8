"""Health's view of the process: the memory budget refusing requests for long
is a problem that clears once a reservation gets through again."""

from __future__ import annotations

import pytest

from service import budget as budget_module
from service import vitals
from service.budget import MemoryBudget
from service.errors import AtCapacity, TooLarge


def test_a_budget_refusing_for_long_is_a_problem_until_one_fits(monkeypatch):
    monkeypatch.setattr(vitals, "MEMORY_EXHAUSTED_AFTER", 0.0)  # "for long" = from the first refusal
    budget = MemoryBudget(100)
    watch = vitals.Vitals(budget)
    assert watch.problems() == []
    budget.reserve(80, 0.0, "first")
    with pytest.raises(AtCapacity):
        budget.reserve(40, 0.01, "second")
    assert any("memory budget" in p for p in watch.problems())
    budget.release(80)
    budget.reserve(40, 0.0, "second again")
    assert watch.problems() == []


def test_a_reservation_over_the_whole_budget_is_refused_at_once_and_is_no_exhaustion():
    budget = MemoryBudget(100)
    with pytest.raises(TooLarge):
        budget.reserve(101, 60.0, "huge")  # a wait could never help: no waiting
    assert budget.exhausted_for() is None and budget.in_use == 0


def test_descriptor_count_is_this_process():
    before = vitals.open_descriptors()
    with open(__file__) as _:
        assert vitals.open_descriptors() == before + 1


def test_a_trim_is_due_once_enough_was_released():
    budget = MemoryBudget(1 << 30)
    budget.reserve(1, 0.0, "held throughout")  # the budget never goes idle: only periodic trims
    budget.reserve(budget_module.TRIM_AFTER_BYTES - 1, 0.0, "almost")
    budget.release(budget_module.TRIM_AFTER_BYTES - 1)
    assert not budget.trim_if_due()
    budget.reserve(1, 0.0, "one more byte")
    budget.release(1)
    assert budget.trim_if_due()
    assert not budget.trim_if_due()  # counted afresh after a trim
    budget.release(1)  # idle again: trimmed at once when enough was released
    assert budget.in_use == 0


def test_the_last_release_of_a_burst_trims_at_once():
    budget = MemoryBudget(1 << 30)
    budget.reserve(budget_module.TRIM_AFTER_BYTES, 0.0, "large")
    budget.release(budget_module.TRIM_AFTER_BYTES)
    assert not budget.trim_if_due()  # already done by the release


def test_the_periodic_trim_catches_what_was_freed_after_the_last_release():
    budget = MemoryBudget(1 << 30)
    budget.reserve(1, 0.0, "held")
    budget.reserve(10, 0.0, "small")
    budget.release(10)
    assert not budget.periodic_trim()  # under load: waits for 64 MiB
    budget.release(1)  # idle, too little for an immediate trim
    assert budget.periodic_trim()  # idle: any release is enough
    assert not budget.periodic_trim()
