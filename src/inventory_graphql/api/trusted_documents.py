"""Trusted documents (persisted operations): the documents this service's own clients send,
registered by hash in a manifest (`trusted-documents.json`, built by
`inventory-graphql trusted-documents`; see api/trusted_manifest.py).

- A request may name a registered document by id instead of sending its text, as
  GraphQL-over-HTTP's persisted documents do: `{"documentId": "sha256:<hex>", ...}`, the
  hex being the SHA-256 of the document's exact UTF-8 text. Sending the text itself works
  as before, and is recognised as trusted when it is registered, byte for byte.
- With trusted-only on, storefront callers may run registered documents only; admin
  callers (the admin token) may still send any document. A refusal is answered before
  anything is parsed.
- A registered document is parsed and validated once, when the manifest is loaded; the
  schema pins that DocumentNode in its document cache (api/schema.py), so a request that
  sends the document skips the parser.

The manifest has the shape of Apollo's persisted-query manifest (`format`, `version`,
`operations` with `id`, `name`, `type` and `body`), with ids written as GraphQL-over-HTTP
persisted-document ids (`sha256:<hex>`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    parse,
    specified_rules,
    validate,
)

from inventory_graphql.api.request_guards import expanded_field_count
from inventory_graphql.config import ConfigError

FORMAT = "apollo-persisted-query-manifest"
VERSION = 1
PREFIX = "sha256:"
REBUILD = "rebuild it with `inventory-graphql trusted-documents`"

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
REQUIRED = "TRUSTED_DOCUMENT_REQUIRED"
BAD_REQUEST = "BAD_REQUEST"


def document_id(text: str) -> str:
    """The document's id: `sha256:` and the hex SHA-256 of its exact UTF-8 text."""
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()


class ManifestError(ConfigError):
    """The manifest cannot be used; the server refuses to start (exit 2)."""


@dataclass(frozen=True)
class DocumentChecks:
    """What every trusted document must pass: the service's validation and limits, so that
    a request bringing one may skip both."""

    schema: GraphQLSchema
    rules: Sequence[type[ASTValidationRule]] = ()  # on top of graphql-core's specified rules
    max_tokens: int | None = None
    max_fields: int | None = None

    def parsed(self, body: str) -> DocumentNode:
        """The document parsed and validated; ValueError saying what is wrong."""
        try:
            document = parse(body, max_tokens=self.max_tokens)
        except GraphQLError as error:
            raise ValueError(error.message) from None
        if errors := validate(self.schema, document, [*specified_rules, *self.rules]):
            raise ValueError("; ".join(error.message for error in errors))
        fields = expanded_field_count(document)
        if self.max_fields is not None and fields > self.max_fields:
            raise ValueError(f"selects {fields} fields; the limit is {self.max_fields}")
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) != 1:
            raise ValueError("a trusted document holds one operation and the fragments it uses")
        if operations[0].name is None:
            raise ValueError("the operation needs a name")
        return document


@dataclass(frozen=True)
class TrustedDocument:
    id: str
    name: str
    type: str  # query, mutation or subscription
    body: str  # the exact text
    document: DocumentNode = field(compare=False, repr=False)

    @classmethod
    def of(cls, body: str, checks: DocumentChecks) -> TrustedDocument:
        """The document with this text, parsed and validated (ValueError if it is not valid)."""
        document = checks.parsed(body)
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        assert operation.name is not None  # checked by parsed()
        return cls(
            document_id(body), operation.name.value, operation.operation.value, body, document
        )


class Manifest:
    """Trusted documents by id and by exact text."""

    def __init__(self, documents: Iterable[TrustedDocument] = ()) -> None:
        self._by_id = {document.id: document for document in documents}
        self._by_text = {document.body: document for document in self._by_id.values()}
        # By identity: graphql-core's nodes hash their whole tree.
        self._pinned = {id(document.document) for document in self._by_id.values()}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[TrustedDocument]:
        return iter(sorted(self._by_id.values(), key=lambda d: (d.name, d.id)))

    def get(self, document_id: str) -> TrustedDocument | None:
        return self._by_id.get(document_id)

    def document(self, text: str | None) -> DocumentNode | None:
        """The pre-parsed, pre-validated document with exactly this text, if registered."""
        found = self._by_text.get(text) if text is not None else None
        return found.document if found is not None else None

    def is_trusted(self, text: str | None) -> bool:
        return text is not None and text in self._by_text

    def is_pinned(self, document: DocumentNode | None) -> bool:
        """Whether this is a registered document's own DocumentNode (parsed and validated
        at load), as the schema's document cache hands it to a request."""
        return document is not None and id(document) in self._pinned

    def to_json(self) -> str:
        operations = [{"id": d.id, "name": d.name, "type": d.type, "body": d.body} for d in self]
        manifest = {"format": FORMAT, "version": VERSION, "operations": operations}
        return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, path: Path, checks: DocumentChecks) -> Manifest:
        """The manifest in `path`, every document checked; ManifestError if any is wrong."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(f"trusted documents: cannot read {path}: {error}") from None
        return cls.from_json(text, checks, str(path))

    @classmethod
    def from_json(cls, text: str, checks: DocumentChecks, source: str) -> Manifest:
        def refuse(problem: str) -> ManifestError:
            return ManifestError(f"trusted documents: {source}: {problem}; {REBUILD}")

        try:
            data = json.loads(text)
        except ValueError as error:
            raise refuse(f"not JSON ({error})") from None
        operations = data.get("operations") if isinstance(data, dict) else None
        if not isinstance(operations, list) or data.get("format") != FORMAT:
            raise refuse(f'expected {{"format": "{FORMAT}", "version": 1, "operations": [...]}}')
        documents: dict[str, TrustedDocument] = {}
        for index, entry in enumerate(operations):
            where = f"operation {index}"
            if not isinstance(entry, dict) or not all(
                isinstance(entry.get(key), str) for key in ("id", "name", "type", "body")
            ):
                raise refuse(f"{where}: needs string id, name, type and body")
            where += f" ({entry['name']!r})"
            if document_id(entry["body"]) != entry["id"]:
                raise refuse(f"{where}: its id is not the SHA-256 of its body")
            if entry["id"] in documents:
                raise refuse(f"{where}: listed twice")
            try:
                document = TrustedDocument.of(entry["body"], checks)
            except ValueError as error:
                raise refuse(f"{where}: {error}") from None
            if (document.name, document.type) != (entry["name"], entry["type"]):
                raise refuse(
                    f"{where}: its body is the {document.type} {document.name!r}, "
                    f"not the {entry['type']} {entry['name']!r}"
                )
            documents[document.id] = document
        return cls(documents.values())


class DocumentRefused(Exception):
    """A request's document is not run: unknown id, untrusted text, or a contradiction."""

    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # GraphQL-over-HTTP (application/json): 200 for a well-formed request; a request
        # that contradicts itself is not one.
        self.status = status

    def error(self, **extensions: object) -> GraphQLError:
        return GraphQLError(self.message, extensions={"code": self.code, **extensions})


@dataclass(frozen=True)
class TrustedDocuments:
    """What a request may run: the manifest, and whether storefront callers are held to it."""

    manifest: Manifest
    only: bool = False

    def admit(self, query: object, requested_id: object, *, admin: bool) -> str | None:
        """The text to run (None: the request has none, Strawberry answers that).

        Raises DocumentRefused when the document must not run.
        """
        if query is not None and not isinstance(query, str):
            raise DocumentRefused(BAD_REQUEST, "`query` must be a string.", 400)
        if requested_id is not None:
            if not isinstance(requested_id, str):
                raise DocumentRefused(BAD_REQUEST, "`documentId` must be a string.", 400)
            if query is None:
                found = self.manifest.get(requested_id)
                if found is None:
                    raise DocumentRefused(
                        NOT_FOUND, f"No trusted document has the id {requested_id[:80]!r}."
                    )
                return found.body
            if document_id(query) != requested_id:
                raise DocumentRefused(
                    BAD_REQUEST,
                    "`query` and `documentId` disagree (the id is not the SHA-256 of the "
                    "query's text); send one of them.",
                    400,
                )
        if query is not None and self.only and not admin and not self.manifest.is_trusted(query):
            raise DocumentRefused(
                REQUIRED,
                "This server runs trusted documents only: send a registered document's "
                "`documentId` (or its exact text). Other documents need the admin token.",
            )
        return query
