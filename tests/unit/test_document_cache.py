"""Parsed documents by their text: bounded by estimated memory as well as by count, least
recently used out first, heavy documents never kept, pinned ones always found."""

from __future__ import annotations

import strawberry
from graphql import parse

from inventory_graphql.api.document_cache import (
    TOKEN_BYTES,
    CachedDocument,
    DocumentCache,
    weigh,
)
from inventory_graphql.api.request_guards import Guards, Limits, RequestGuards


def document(i: int, fields: int = 1) -> str:
    return "{ " + " ".join(f"f{i}_{n}: __typename" for n in range(fields)) + " }"


def entry(text: str) -> CachedDocument:
    return CachedDocument.parse(text)


def test_an_entry_weighs_its_text_and_its_tokens() -> None:
    text = "{ a b }"  # four tokens, and the start and end of the document
    assert weigh(text, parse(text)) == len(text) + 6 * TOKEN_BYTES
    # Comments are tokens graphql-core keeps too.
    assert weigh("# hi\n{ a }", parse("# hi\n{ a }")) == 10 + 6 * TOKEN_BYTES


def test_the_cache_keeps_at_most_max_bytes_evicting_the_least_recently_used() -> None:
    weight = entry(document(0)).weight
    cache = DocumentCache(max_bytes=3 * weight, max_entries=100, max_document_bytes=weight)
    for i in range(3):
        cache.put(document(i), entry(document(i)))
    assert cache.get(document(0)) is not None  # now the most recently used
    cache.put(document(3), entry(document(3)))
    assert cache.get(document(1)) is None  # the least recently used went
    assert all(cache.get(document(i)) is not None for i in (0, 2, 3))
    assert cache.bytes == 3 * weight


def test_the_cache_keeps_at_most_max_entries() -> None:
    cache = DocumentCache(max_bytes=1 << 30, max_entries=2, max_document_bytes=1 << 30)
    for i in range(5):
        cache.put(document(i), entry(document(i)))
    assert len(cache.entries) == 2 and cache.get(document(4)) is not None


def test_a_document_heavier_than_the_per_document_bound_is_not_kept() -> None:
    light, heavy = entry(document(0)), entry(document(1, fields=50))
    cache = DocumentCache(max_bytes=1 << 30, max_entries=10, max_document_bytes=light.weight)
    cache.put(document(0), light)
    cache.put(document(1, fields=50), heavy)
    assert cache.get(document(0)) is light
    assert cache.get(document(1, fields=50)) is None
    assert cache.bytes == light.weight


def test_pinned_documents_are_found_first_and_never_evicted_or_counted() -> None:
    pinned = entry("query Pinned { __typename }")
    cache = DocumentCache(
        max_bytes=1,
        max_entries=1,
        max_document_bytes=1,
        pinned={"query Pinned { __typename }": pinned},
    )
    cache.put(document(0), entry(document(0)))  # too heavy to keep: evicts nothing pinned
    assert cache.get("query Pinned { __typename }") is pinned and cache.bytes == 0


def guarded(documents: DocumentCache) -> strawberry.Schema:
    @strawberry.type
    class Query:
        @strawberry.field
        def ping(self) -> str:
            return "pong"

    limits = Limits(max_tokens=500, max_fields=50, max_variable_values=10, max_variable_depth=3)
    guards = Guards(limits, (), documents)
    return strawberry.Schema(query=Query, extensions=[lambda: RequestGuards(guards)])


async def test_a_schema_parses_a_document_once_and_keeps_what_it_learns() -> None:
    documents = DocumentCache(max_bytes=1 << 20, max_entries=8, max_document_bytes=1 << 16)
    schema = guarded(documents)
    for _ in range(3):
        assert (await schema.execute("{ ping }")).data == {"ping": "pong"}
    (kept,) = documents.entries.values()
    assert kept.fields == 1 and kept.validated_with and kept.errors == ()
    # An invalid document is kept with its errors, answered the same way each time.
    for _ in range(2):
        (error,) = (await schema.execute("{ nope }")).errors or []
        assert "nope" in error.message
    assert len(documents.entries) == 2


async def test_a_document_that_does_not_parse_is_answered_and_not_kept() -> None:
    documents = DocumentCache(max_bytes=1 << 20, max_entries=8, max_document_bytes=1 << 16)
    result = await guarded(documents).execute("{ ping ")
    (error,) = result.errors or []
    assert "Syntax Error" in error.message
    assert not documents.entries


async def test_many_distinct_documents_stay_within_the_cache_bound() -> None:
    def text(i: int) -> str:  # 10 fields, 34 tokens: ~21 KB each, estimated
        return "{ " + " ".join(f"a{i:03d}_{n}: ping" for n in range(10)) + " }"

    weight = entry(text(0)).weight
    documents = DocumentCache(max_bytes=12 * weight, max_entries=256, max_document_bytes=weight)
    schema = guarded(documents)
    for i in range(200):
        assert (await schema.execute(text(i))).errors is None
    assert documents.bytes <= 12 * weight
    assert list(documents.entries) == [text(i) for i in range(188, 200)]  # the latest twelve
