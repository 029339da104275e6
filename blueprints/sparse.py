"""Loading a request body that names few of its schema's fields, at the cost of those few.

A Chat Completions body declares 45 fields (every OpenAI field is declared, so that none is
silently ignored) and a typical request names four. marshmallow's load walks every field,
and an absent one costs a getter closure, `Field.deserialize`, its required check and
`set_value`: 94 µs of a 1.2 ms request on the dev machine, most of it for fields the body
does not have. `SparseLoad` hands marshmallow only the fields the body names (and the
required ones, so that a missing one is still an error), then puts each absent field's
`load_default` in the result, in declaration order: the dict the hooks (`@validates`,
`@validates_schema`, `@post_load`) see is the very one a full load gives.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema
from marshmallow.utils import missing

# The plans one schema keeps: one per set of keys seen. Clients send a few shapes; a
# client trying every subset only makes the cache start over.
PLANS = 128

_Plan = tuple[Schema, tuple[tuple[str, Any], ...]]


class SparseLoad(Schema):
    """A body schema loaded field by named field (see the module's docstring)."""

    def _deserialize(
        self,
        data: Any,
        *,
        error_store: Any,
        many: bool = False,
        partial: Any = None,
        unknown: Any = RAISE,
        index: Any = None,
    ) -> Any:
        plan = None
        if not many and partial is None and isinstance(data, Mapping):
            plan = self._plan(data)
        if plan is None:  # a list, a partial load, or a key no field names: the full walk
            return super()._deserialize(
                data, error_store=error_store, many=many, partial=partial, unknown=unknown, index=index
            )
        view, order = plan
        loaded = Schema._deserialize(view, data, error_store=error_store, unknown=unknown, index=index)
        assert isinstance(loaded, dict)  # one object (many is False): marshmallow's dict_class
        out = self.dict_class()
        for key, default in order:
            if key in loaded:
                out[key] = loaded[key]
            elif default is not missing:
                out[key] = default() if callable(default) else default
        return out

    def _plan(self, data: Mapping[str, Any]) -> _Plan | None:
        """This schema with only the fields `data` names (and the required ones) to load,
        and every load field's result key with its default; None where a plain load is
        the same or must run (a key no field names is an error the full walk reports)."""
        keys = frozenset(data)
        plans: dict[frozenset[str], _Plan | None] | None = self.__dict__.get("_llmpool_plans")
        if plans is None:
            plans = self.__dict__["_llmpool_plans"] = {}
        elif keys in plans:
            return plans[keys]
        if len(plans) >= PLANS:
            plans.clear()
        plans[keys] = plan = self._make_plan(keys)
        return plan

    def _make_plan(self, keys: frozenset[str]) -> _Plan | None:
        chosen: dict[str, Any] = {}
        order: list[tuple[str, Any]] = []
        known: set[str] = set()
        for name, field in self.load_fields.items():
            key = field.data_key if field.data_key is not None else name
            known.add(key)
            if field.attribute is not None:  # a renamed or dotted result key: not worth it here
                return None
            if key in keys or field.required:
                chosen[name] = field
            order.append((name, field.load_default))
        if not keys <= known:
            return None
        view = copy.copy(self)  # shares the bound fields and hooks; loads only `chosen`
        view.load_fields = chosen
        view.__dict__.pop("_llmpool_plans", None)
        return view, tuple(order)
