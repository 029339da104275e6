"""Model lifecycle states and the only transitions allowed between them.

Kept free of imports from the rest of the pool (supervisord's habit): the table below is
the whole state machine, and `check_transition` is the one place that enforces it.
"""

from __future__ import annotations

import enum


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


_S = ModelState

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    # An admin load (or start-up) begins; FAILED when the previous worker died inside this
    # model's runtime (llmpool.crashes), before anything loads it again.
    _S.UNLOADED: frozenset({_S.LOADING, _S.FAILED}),
    # Every replica came up (LOADED) or one did not and the rest were torn down (FAILED);
    # UNLOADED when a load on demand was cancelled because every waiting client left.
    # No edge to UNLOADING: an unload while loading is refused (409 model_loading).
    _S.LOADING: frozenset({_S.LOADED, _S.FAILED, _S.UNLOADED}),
    # Graceful or forced unload; FAILED when the last replica dies under us.
    _S.LOADED: frozenset({_S.UNLOADING, _S.FAILED}),
    # Drain finished and runtimes closed (UNLOADED); closing itself blew up (FAILED).
    _S.UNLOADING: frozenset({_S.UNLOADED, _S.FAILED}),
    # A failed model can be retried directly or cleaned up (its last_error kept until then).
    _S.FAILED: frozenset({_S.LOADING, _S.UNLOADING, _S.UNLOADED}),
}


class IllegalTransition(RuntimeError):
    """A caller tried an edge the table does not allow: always a bug in the caller."""


def check_transition(current: ModelState, new: ModelState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not allowed")
