"""A request's context is freed when the request ends, not by the garbage collector."""

from __future__ import annotations

import gc
from typing import Any, cast

from inventory_graphql.api.context import Context


def test_a_context_and_its_loader_hold_no_reference_cycle():
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        service = cast(Any, object())
        context = Context(request=cast(Any, object()), response=None, service=service, hub=None)  # type: ignore[arg-type]
        assert context.products is not None
        del context
        gc.collect()
        contexts = [o for o in gc.garbage if isinstance(o, Context)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert contexts == []
