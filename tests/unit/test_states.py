"""The model state machine: the table is the whole contract, one test per notable edge."""

from __future__ import annotations

import itertools

import pytest

from llmpool.states import TRANSITIONS, IllegalTransition, ModelState, check_transition

S = ModelState

# Written out by hand (not derived from TRANSITIONS) so a change to the table must be
# mirrored here on purpose.
ALLOWED = {
    (S.UNLOADED, S.LOADING),
    (S.UNLOADED, S.FAILED),  # the previous worker died inside this model's runtime (issue 19)
    (S.LOADING, S.LOADED),
    (S.LOADING, S.FAILED),
    (S.LOADING, S.UNLOADED),  # a load on demand cancelled: every waiting client left
    (S.LOADED, S.UNLOADING),
    (S.LOADED, S.FAILED),
    (S.UNLOADING, S.UNLOADED),
    (S.UNLOADING, S.FAILED),
    (S.FAILED, S.LOADING),
    (S.FAILED, S.UNLOADING),
    (S.FAILED, S.UNLOADED),
}
ALL_PAIRS = list(itertools.product(ModelState, repeat=2))


def _id(pair: tuple[ModelState, ModelState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_state_values_are_the_admin_api_strings() -> None:
    assert [s.value for s in ModelState] == ["unloaded", "loading", "loaded", "unloading", "failed"]


def test_table_has_a_row_for_every_state() -> None:
    assert set(TRANSITIONS) == set(ModelState)


def test_table_matches_the_documented_edges() -> None:
    table = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert table == ALLOWED


@pytest.mark.parametrize("pair", sorted(ALLOWED), ids=_id)
def test_allowed_edge_passes(pair: tuple[ModelState, ModelState]) -> None:
    check_transition(*pair)


@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if p not in ALLOWED], ids=_id)
def test_other_pair_raises_illegal_transition(pair: tuple[ModelState, ModelState]) -> None:
    with pytest.raises(IllegalTransition, match=f"{pair[0].value} -> {pair[1].value}"):
        check_transition(*pair)


def test_no_state_transitions_to_itself() -> None:
    for state in ModelState:
        with pytest.raises(IllegalTransition):
            check_transition(state, state)


def test_load_begins_from_unloaded() -> None:
    check_transition(S.UNLOADED, S.LOADING)


def test_loading_succeeds_into_loaded() -> None:
    check_transition(S.LOADING, S.LOADED)


def test_loading_can_fail() -> None:
    check_transition(S.LOADING, S.FAILED)


def test_unload_of_a_loaded_model_starts_unloading() -> None:
    check_transition(S.LOADED, S.UNLOADING)


def test_loaded_model_fails_when_its_last_replica_dies() -> None:
    check_transition(S.LOADED, S.FAILED)


def test_unloading_ends_unloaded() -> None:
    check_transition(S.UNLOADING, S.UNLOADED)


def test_unloading_fails_when_closing_blows_up() -> None:
    check_transition(S.UNLOADING, S.FAILED)


def test_failed_model_can_be_retried_by_loading_again() -> None:
    check_transition(S.FAILED, S.LOADING)


def test_a_worker_crash_marks_an_unloaded_model_failed() -> None:
    # The next worker finds the crash record before anything loads the model again.
    check_transition(S.UNLOADED, S.FAILED)


def test_failed_model_can_be_cleaned_up() -> None:
    check_transition(S.FAILED, S.UNLOADING)
    check_transition(S.FAILED, S.UNLOADED)


def test_unloaded_cannot_jump_to_loaded_without_loading() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(S.UNLOADED, S.LOADED)


def test_unload_while_loading_is_not_an_edge() -> None:
    # The pool answers 409 model_loading instead; the table must not allow it.
    with pytest.raises(IllegalTransition):
        check_transition(S.LOADING, S.UNLOADING)


def test_loaded_cannot_skip_draining_to_unloaded() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(S.LOADED, S.UNLOADED)


def test_unloading_cannot_be_reversed_into_loaded() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(S.UNLOADING, S.LOADED)


def test_illegal_transition_is_a_runtime_error() -> None:
    # Callers treat it as a bug (500), not a client error.
    assert issubclass(IllegalTransition, RuntimeError)
