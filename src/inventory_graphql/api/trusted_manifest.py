"""The trusted-documents manifest: built from client sources, loaded for the server.

`inventory-graphql trusted-documents [PATHS...]` reads the storefront demo and every
file and directory given (node_modules and hidden directories are skipped):

- JavaScript and TypeScript: each template literal marked with the `/* GraphQL */` magic
  comment (graphql-tag-pluck's convention) is one document, its text exactly as written,
  which is the text the client sends. It may not interpolate (`${...}`) or hold escapes:
  its text, and so its id, must be fixed in the source.
- `.graphql` and `.gql` files: each named operation, with the fragments it uses (from any
  of the files), is one document, in graphql-core's printed form (graphql-js's `print`):
  the operation, then its fragments by name. Clients send these by `documentId`.
  Type-system definitions (a schema file) are ignored.

Every document must validate against the service's schema within its limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
    print_ast,
)

from inventory_graphql.api.internals import core_schema
from inventory_graphql.api.schema import LIMIT_RULES, MAX_FIELDS, MAX_TOKENS, schema
from inventory_graphql.api.trusted_documents import (
    DocumentChecks,
    Manifest,
    ManifestError,
    TrustedDocument,
    TrustedDocuments,
)
from inventory_graphql.config import Settings

JAVASCRIPT = {".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx"}
GRAPHQL = {".graphql", ".gql"}
MAGIC = re.compile(r"/\*\s*GraphQL\s*\*/\s*`", re.IGNORECASE)


class SourceError(ValueError):
    """A source cannot give a trusted document; the message says where and why."""


@dataclass(frozen=True)
class Source:
    body: str
    where: str  # file:line


def service_checks() -> DocumentChecks:
    """The schema's validation with the service's own limits (api/schema.py)."""
    graphql_schema = core_schema(schema)
    assert graphql_schema is not None, "see api/internals.py item 6"
    return DocumentChecks(graphql_schema, LIMIT_RULES, MAX_TOKENS, MAX_FIELDS)


def build(paths: Sequence[Path], checks: DocumentChecks) -> Manifest:
    """A manifest of every document in these files and directories."""
    documents: dict[str, TrustedDocument] = {}
    for source in collect(paths):
        try:
            document = TrustedDocument.of(source.body, checks)
        except ValueError as error:
            raise SourceError(f"{source.where}: {error}") from None
        documents.setdefault(document.id, document)
    return Manifest(documents.values())


def collect(paths: Sequence[Path]) -> list[Source]:
    files = list(dict.fromkeys(_files(paths)))
    sources = [source for file in files if file.suffix in JAVASCRIPT for source in _js(file)]
    return sources + _graphql([file for file in files if file.suffix in GRAPHQL])


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                skipped = any(
                    part == "node_modules" or part.startswith(".")
                    for part in file.relative_to(path).parts
                )
                if file.suffix in JAVASCRIPT | GRAPHQL and file.is_file() and not skipped:
                    yield file
        elif not path.is_file():
            raise SourceError(f"{path}: no such file or directory")
        elif path.suffix not in JAVASCRIPT | GRAPHQL:
            raise SourceError(f"{path}: not a JavaScript, TypeScript or .graphql file")
        else:
            yield path


def _js(file: Path) -> Iterator[Source]:
    text = file.read_text(encoding="utf-8")
    for match in MAGIC.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if text[line_start : match.start()].lstrip().startswith(("//", "*")):
            continue  # in a comment (a regular expression, not a JavaScript parser)
        where = f"{file}:{text.count(chr(10), 0, match.start()) + 1}"
        end = text.find("`", match.end())
        if end < 0:
            raise SourceError(f"{where}: the /* GraphQL */ template literal never ends")
        body = text[match.end() : end]
        if "${" in body:
            raise SourceError(
                f"{where}: a /* GraphQL */ template literal may not interpolate (`${{...}}`): "
                "write the document out in full, so that its text and its id are fixed"
            )
        if "\\" in body:
            raise SourceError(
                f"{where}: a /* GraphQL */ template literal may not hold escapes (`\\`): "
                "the text sent must be the text written"
            )
        yield Source(body, where)


def _graphql(files: Sequence[Path]) -> list[Source]:
    parsed: list[tuple[Path, DocumentNode]] = []
    fragments: dict[str, FragmentDefinitionNode] = {}
    for file in files:
        try:
            document = parse(file.read_text(encoding="utf-8"))
        except GraphQLError as error:
            line = error.locations[0].line if error.locations else 1
            raise SourceError(f"{file}:{line}: {error.message}") from None
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                if definition.name.value in fragments:
                    raise SourceError(f"{file}: fragment {definition.name.value} is defined twice")
                fragments[definition.name.value] = definition
        parsed.append((file, document))
    sources = []
    for file, document in parsed:
        for definition in document.definitions:
            if isinstance(definition, OperationDefinitionNode):
                where = f"{file}:{_line(definition)}"
                if definition.name is None:
                    raise SourceError(f"{where}: the operation needs a name")
                used = sorted(_fragments_used(definition.selection_set, fragments))
                alone = DocumentNode(definitions=(definition, *(fragments[n] for n in used)))
                sources.append(Source(print_ast(alone), where))
    return sources


def _line(definition: OperationDefinitionNode) -> int:
    loc = definition.loc
    return loc.source.get_location(loc.start).line if loc is not None else 1


def _fragments_used(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    found: set[str] | None = None,
) -> set[str]:
    """Names of the fragments a selection spreads, directly or through other fragments
    (unknown ones are left for validation to report)."""
    found = set() if found is None else found
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name not in found and name in fragments:
                found.add(name)
                _fragments_used(fragments[name].selection_set, fragments, found)
        else:
            _fragments_used(getattr(selection, "selection_set", None), fragments, found)
    return found


def changes(current: str, manifest: Manifest) -> list[str]:
    """What rebuilding would change in a manifest file's text, one line per document."""
    try:
        listed = {(op["name"], op["id"]) for op in json.loads(current)["operations"]}
    except (ValueError, KeyError, TypeError):
        return ["the file is not a manifest"]
    built = {(document.name, document.id) for document in manifest}
    lines = [f"+ {name} {id}" for name, id in sorted(built - listed)]
    lines += [f"- {name} {id}" for name, id in sorted(listed - built)]
    return lines or ["same documents, different formatting"]


def load_trusted_documents(settings: Settings) -> TrustedDocuments:
    """The manifest the server runs with, every document checked; ManifestError if it
    cannot be used (the server then refuses to start)."""
    only = settings.trusted_documents_only
    only = settings.production if only is None else only
    path = settings.trusted_documents_file
    if path.is_file():
        return TrustedDocuments(Manifest.load(path, service_checks()), only=only)
    if only:
        raise ManifestError(
            f"INVENTORY_TRUSTED_DOCUMENTS_FILE: no manifest at {path}, and trusted-only mode "
            "needs one (INVENTORY_TRUSTED_DOCUMENTS_ONLY=off runs any document)"
        )
    if path != Settings().trusted_documents_file:
        raise ManifestError(f"INVENTORY_TRUSTED_DOCUMENTS_FILE: no manifest at {path}")
    # Not a checkout (an installed package) and not asked for: no trusted documents.
    return TrustedDocuments(Manifest(), only=False)
