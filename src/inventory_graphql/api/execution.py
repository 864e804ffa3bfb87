"""The executor graphql-core runs our operations with (Strawberry's, with one repair)."""

from __future__ import annotations

from typing import Any

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext


class Executor(StrawberryGraphQLCoreExecutionContext):
    def build_per_event_executor(self, payload: Any) -> Executor:
        executor = super().build_per_event_executor(payload)
        # graphql-core 3.3 memoizes sub-field collection by the identity of each field
        # list, in a dict the per-event copies share with the subscription's executor.
        # Every event collects its root fields into a new list, so the dict gained an
        # entry per event for the life of the subscription: a leak of ~20 objects per
        # delivered update, and full garbage collections (0.5 s each at 1,000
        # subscribers) walking all of them. One memo per event keeps what it is for.
        executor._relevant_sub_fields = {}
        return executor
