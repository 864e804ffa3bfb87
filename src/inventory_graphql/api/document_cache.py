"""Parsed documents by their text, and what is known about each, bounded by memory.

Strawberry's ParserCache and ValidationCache are module-level LRUs that count entries
only (256 big documents kept ~35 MB each), and the validation cache hashes the whole
parsed document on every request. This cache belongs to one schema. An entry weighs its
text plus what its parsed form keeps: graphql-core keeps every token, about 350-560 bytes
each (measured), counted here as TOKEN_BYTES. The cache holds at most `max_bytes` of
entries and `max_entries` of them, evicting the least recently used, and keeps no document
heavier than `max_document_bytes`. An entry carries what is learnt about its document
once (validation errors, expanded field count, cost at worst): a hot document costs one
dict lookup by its text.

`pinned` documents (registered ahead, e.g. trusted documents) are looked up first, never
evicted and not counted against the bounds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import ASTValidationRule, DocumentNode, GraphQLError, parse

TOKEN_BYTES = 600


@dataclass(eq=False)
class CachedDocument:
    document: DocumentNode
    weight: int  # bytes, estimated: the text and the parsed form
    # Validation's answer, and the rules it was for (a schema's rules are fixed).
    validated_with: tuple[type[ASTValidationRule], ...] | None = None
    errors: Sequence[GraphQLError] = ()
    fields: int | None = None  # expanded field count (request_guards)
    costs: dict[str | None, int | None] = field(default_factory=dict)  # operation -> cost
    # operation -> its plan, or why it has none (compiled_http.py)
    plans: dict[str | None, object] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, **options: Any) -> CachedDocument:
        """Parse `text` (graphql-core's options); GraphQLError when it cannot be."""
        document = parse(text, **options)
        return cls(document, weigh(text, document))


def weigh(text: str, document: DocumentNode) -> int:
    tokens = 0
    token = document.loc.start_token if document.loc else None
    while token is not None:
        tokens += 1
        token = token.next
    return len(text.encode()) + TOKEN_BYTES * tokens


class DocumentCache:
    def __init__(
        self,
        *,
        max_bytes: int,
        max_entries: int,
        max_document_bytes: int,
        pinned: Mapping[str, CachedDocument] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.max_document_bytes = max_document_bytes
        self.pinned: Mapping[str, CachedDocument] = pinned or {}
        self.entries: OrderedDict[str, CachedDocument] = OrderedDict()
        self.bytes = 0

    def get(self, text: str) -> CachedDocument | None:
        if (entry := self.pinned.get(text)) is not None:
            return entry
        if (entry := self.entries.get(text)) is not None:
            self.entries.move_to_end(text)
        return entry

    def put(self, text: str, entry: CachedDocument) -> None:
        """Keep `entry` if it is light enough, evicting the least recently used."""
        if entry.weight > self.max_document_bytes or text in self.entries:
            return
        self.entries[text] = entry
        self.bytes += entry.weight
        while self.bytes > self.max_bytes or len(self.entries) > self.max_entries:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= evicted.weight
