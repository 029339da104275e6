"""The placement policy as a pure function (llmpool.placement.policy): snapshots in,
actions out; no threads, no clock, no models."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmpool.placement.policy import (
    Block,
    DemandFacts,
    Drain,
    Drop,
    Evict,
    HandOver,
    ModelFacts,
    Release,
    Snapshot,
    StartLoad,
    decide,
    idle_unloads,
)
from llmpool.states import ModelState

GPU = "cuda:0"


def model(name: str, **kw: Any) -> ModelFacts:
    base = ModelFacts(
        name=name,
        device=GPU,
        state=ModelState.UNLOADED,
        serving=False,
        load_on_demand=True,
        pinned=False,
        swap_out=False,
        idle=True,
        resident_s=None,
        last_used=0.0,
        held_mib=0.0,
        need_mib=1000.0,
    )
    return replace(base, **kw)


def loaded(name: str, mib: float, last_used: float, **kw: Any) -> ModelFacts:
    facts = {"state": ModelState.LOADED, "serving": True, "resident_s": 600.0, **kw}
    return model(name, last_used=last_used, held_mib=mib, **facts)


def snap(
    models: list[ModelFacts], demands: list[DemandFacts], budget: float | None = 3000.0, **kw: Any
) -> Snapshot:
    settings = {"swap_max_wait_s": 30.0, "memory_wait_timeout_s": 120.0, "min_resident_s": 60.0, **kw}
    return Snapshot(
        budgets={GPU: budget} if budget is not None else {},
        models={m.name: m for m in models},
        demands=demands,
        **settings,
    )


def wants(name: str, waited_s: float = 0.0, **kw: Any) -> DemandFacts:
    return DemandFacts(model=name, waited_s=waited_s, loading=False, **kw)


def test_a_serving_model_takes_its_waiting_jobs_unless_drained_for_another() -> None:
    assert decide(snap([loaded("a", 500, 1)], [wants("a")])) == [HandOver("a")]
    drained = loaded("a", 500, 1, swap_out=True, idle=False)
    other = model("b", state=ModelState.UNLOADED)
    demands = [wants("a"), wants("b", 1)]
    # a's new jobs wait for its next load; b waits for the memory a still holds.
    assert decide(snap([drained, other], demands, budget=1200)) == [Block("a"), Block("b")]
    # Once a drained model is idle it is evicted for the waiter, though jobs wait for it.
    idle = replace(drained, idle=True)
    assert decide(snap([idle, other], demands, budget=1200)) == [Block("a"), Block("b"), Evict("a", "b")]


def test_a_model_loading_or_unloading_is_left_alone() -> None:
    for state in (ModelState.LOADING, ModelState.UNLOADING):
        assert decide(snap([model("a", state=state)], [wants("a")])) == []
    assert decide(snap([model("a")], [DemandFacts("a", 5.0, loading=True, reserved_mib=1000)])) == []


def test_without_a_budget_a_load_starts_at_once() -> None:
    assert decide(snap([model("a", need_mib=99999)], [wants("a")], budget=None)) == [StartLoad("a", 0.0)]


def test_a_need_beyond_the_whole_budget_fails_at_once() -> None:
    [action] = decide(snap([model("a", need_mib=5000)], [wants("a")]))
    assert isinstance(action, Drop) and action.reason == "too_big" and "5000 MiB" in action.message


def test_loads_that_fit_start_and_reserve_their_need_for_the_next_demand() -> None:
    s = snap([model("a", need_mib=2000), model("b", need_mib=2000)], [wants("a", 3), wants("b", 1)])
    # a reserves 2000 of 3000: b no longer fits and nothing is evictable, so it waits.
    assert decide(s) == [StartLoad("a", 2000.0), Block("b")]


def test_idle_models_are_evicted_least_recently_used_first_until_the_need_fits() -> None:
    models = [
        loaded("old", 1000, last_used=10),
        loaded("older", 1000, last_used=5),
        loaded("recent", 1000, last_used=50),
        model("new", need_mib=1500),
    ]
    assert decide(snap(models, [wants("new")])) == [Block("new"), Evict("older", "new"), Evict("old", "new")]


def test_pinned_busy_young_and_hand_loaded_models_are_never_evicted() -> None:
    models = [
        loaded("pinned", 1000, 1, pinned=True),
        loaded("busy", 1000, 2, idle=False),
        loaded("young", 1000, 3, resident_s=5.0),
        loaded("by-hand", 1000, 4, load_on_demand=False),
        model("new", need_mib=1500),
    ]
    assert decide(snap(models, [wants("new")], budget=4000)) == [Block("new")]


def test_a_long_wait_drains_busy_models_then_fails_naming_the_holders() -> None:
    models = [loaded("busy", 2000, 1, idle=False), loaded("pinned", 1000, 2, pinned=True), model("new")]
    assert decide(snap(models, [wants("new", 10)])) == [Block("new")]
    assert decide(snap(models, [wants("new", 31)])) == [Block("new"), Drain("busy", "new")]
    actions = decide(snap(models, [wants("new", 121)]))
    assert actions[:2] == [Block("new"), Drain("busy", "new")]
    drop = actions[2]
    assert isinstance(drop, Drop) and drop.reason == "timeout" and drop.holders == ("busy", "pinned")
    assert "held by: busy, pinned" in drop.message


def test_a_later_demand_on_the_same_device_waits_its_turn_another_device_does_not() -> None:
    models = [
        loaded("busy", 3000, 1, idle=False),
        model("first"),
        model("second"),
        model("cpu", device="cpu"),
    ]
    demands = [wants("first", 5), wants("second", 4), wants("cpu", 3)]
    s = replace(snap(models, demands), budgets={GPU: 3000.0, "cpu": 8000.0})
    assert decide(s) == [Block("first"), StartLoad("cpu", 1000.0)]


def test_a_model_drained_for_a_demand_that_went_away_takes_jobs_again() -> None:
    assert decide(snap([loaded("a", 1000, 1, swap_out=True)], [])) == [Release("a")]
    # Still drained while a demand waits on its device.
    models = [loaded("a", 3000, 1, swap_out=True, idle=False), model("b")]
    assert Release("a") not in decide(snap(models, [wants("b")]))


def test_a_demand_for_a_model_the_settings_no_longer_have_is_left_alone() -> None:
    # A settings reload fails that model's line itself (Pool._replace_entries); the
    # policy neither loads nor drops anything for it.
    assert decide(snap([], [wants("a")])) == []


def test_idle_unloads_wait_for_the_timeout_and_spare_pinned_and_wanted_models() -> None:
    models = [
        loaded("due", 1, 1, idle_unload_s=60.0, idle_for_s=61.0),
        loaded("early", 1, 1, idle_unload_s=60.0, idle_for_s=59.0),
        loaded("pinned", 1, 1, idle_unload_s=60.0, idle_for_s=600.0, pinned=True),
        loaded("wanted", 1, 1, idle_unload_s=60.0, idle_for_s=600.0),
        loaded("forever", 1, 1, idle_for_s=600.0),
    ]
    due = idle_unloads(snap(models, [wants("wanted")]))
    assert [(u.model, u.idle_s, u.ttl_s) for u in due] == [("due", 61.0, 60.0)]
