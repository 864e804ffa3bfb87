"""Trusted documents without a server: ids, the manifest and the sources it is built from,
what a request may run, and the parse a trusted document skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from strawberry.extensions import SchemaExtension

from inventory_graphql import cli
from inventory_graphql.api.schema import build_schema
from inventory_graphql.api.trusted_documents import (
    DocumentRefused,
    Manifest,
    ManifestError,
    TrustedDocument,
    TrustedDocuments,
    document_id,
)
from inventory_graphql.api.trusted_manifest import (
    SourceError,
    build,
    load_trusted_documents,
    service_checks,
)
from inventory_graphql.config import Settings
from tests.support.paths import ROOT

DEMO = ROOT / "frontend-demo"
MANIFEST = ROOT / "trusted-documents.json"
PRODUCTS = "query Products($skus: [String!]) { products(skus: $skus) { sku available } }"


@pytest.fixture(scope="module")
def checks():
    return service_checks()


@pytest.fixture(scope="module")
def trusted(checks) -> Manifest:
    return Manifest([TrustedDocument.of(PRODUCTS, checks)])


def test_ids_are_the_graphql_over_http_persisted_document_ids():
    # The spec's own example (Appendix A, "SHA256 Hex Document Identifier").
    text = "query ($id: ID!) {\n  user(id: $id) {\n    name\n  }\n}"
    assert document_id(text) == (
        "sha256:7dba4bd717b41f10434822356a93c32b1fb4907b983e854300ad839f84cdcd6e"
    )


def test_the_committed_manifest_is_up_to_date(checks):
    built = build([DEMO], checks).to_json()
    assert MANIFEST.read_text() == built, (
        "trusted-documents.json is stale: run `inventory-graphql trusted-documents`"
    )


def test_every_document_the_demo_defines_is_registered(checks):
    manifest = Manifest.load(MANIFEST, checks)
    source = (DEMO / "operations.js").read_text()
    exported = source.count("export const ")
    assert exported == source.count("= /* GraphQL */ `") == len(manifest) == 12
    names = {document.name for document in manifest}
    assert names == {
        "Products",
        "Availability",
        "Reserve",
        "Hold",
        "Extend",
        "Confirm",
        "Release",
        "CreateProduct",
        "AdjustStock",
        "JoinWaitlist",
        "LeaveWaitlist",
        "WaitlistPlace",
    }
    # No other module of the demo writes a document of its own.
    for module in DEMO.glob("*.js"):
        if module.name != "operations.js":
            assert "`\nquery" not in module.read_text() and "`\nmutation" not in module.read_text()


def js(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.js"
    path.write_text(text)
    return path


def test_a_javascript_document_is_its_template_literal_exactly(tmp_path, checks):
    body = "\nquery Products($skus: [String!]) {\n  products(skus: $skus) { sku }\n}"
    path = js(
        tmp_path,
        "// A /* GraphQL */ `comment` is not a document.\n"
        f"export const PRODUCTS = /* GraphQL */ `{body}`;\n"
        "const plain = `not a document`;\n",
    )
    [document] = build([path], checks)
    assert document.body == body
    assert (document.id, document.name, document.type) == (document_id(body), "Products", "query")


@pytest.mark.parametrize(
    ("literal", "says"),
    [
        ("query P { products { ${FIELDS} } }", "may not interpolate"),
        ('query P { product(sku: "A\\u0041") { sku } }', "may not hold escapes"),
        ("query P { products { nope } }", "Cannot query field 'nope' on type 'Product'"),
        ("{ products { sku } }", "the operation needs a name"),
        ("query A { products { sku } } query B { products { sku } }", "one operation"),
        ("query Deep { " + "products { " * 10 + "sku" + " }" * 10 + " }", "exceeds maximum"),
    ],
)
def test_a_javascript_document_that_cannot_be_trusted_is_refused_naming_its_line(
    tmp_path, checks, literal, says
):
    path = js(tmp_path, f"const A = 1;\n\nconst Q = /* GraphQL */ `{literal}`;\n")
    with pytest.raises(SourceError) as refused:
        build([path], checks)
    assert f"{path}:3: " in str(refused.value)
    assert says in str(refused.value)


def test_each_graphql_operation_is_a_document_with_the_fragments_it_uses(tmp_path, checks):
    (tmp_path / "fragments.graphql").write_text(
        "fragment Numbers on Product { quantity available ...Version }\n"
        "fragment Version on Product { version }\n"
        "fragment Unused on Product { name }\n"
    )
    (tmp_path / "operations.gql").write_text(
        "query Stock($skus: [String!]) { products(skus: $skus) { sku ...Numbers } }\n\n"
        "mutation Restock($sku: String!) {\n"
        '  adjustStock(sku: $sku, delta: 1, reason: "r") { __typename }\n}\n'
    )
    (tmp_path / "schema.graphql").write_text("type Ignored { field: Int }\n")  # not a client's
    documents = {document.name: document for document in build([tmp_path], checks)}
    assert set(documents) == {"Stock", "Restock"}
    assert documents["Stock"].body == (
        "query Stock($skus: [String!]) {\n  products(skus: $skus) {\n    sku\n    ...Numbers\n"
        "  }\n}\n\nfragment Numbers on Product {\n  quantity\n  available\n  ...Version\n}\n\n"
        "fragment Version on Product {\n  version\n}"
    )
    assert "fragment" not in documents["Restock"].body


def test_a_manifest_round_trips_and_lists_documents_by_name(checks, trusted):
    again = Manifest.from_json(trusted.to_json(), checks, "test")
    assert [(d.id, d.body) for d in again] == [(document_id(PRODUCTS), PRODUCTS)]
    data = json.loads(trusted.to_json())
    assert data["format"] == "apollo-persisted-query-manifest" and data["version"] == 1
    assert set(data["operations"][0]) == {"id", "name", "type", "body"}


def tampered(manifest: Manifest, **changes: str) -> str:
    data = json.loads(manifest.to_json())
    data["operations"][0].update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (lambda m: tampered(m, body=PRODUCTS.replace("available", "quantity")), "SHA-256"),
        (
            lambda m: tampered(
                m, body="query Products { nope }", id=document_id("query Products { nope }")
            ),
            "Cannot query field 'nope'",
        ),
        (lambda m: tampered(m, name="Other"), "not the query 'Other'"),
        (lambda m: "{not json", "not JSON"),
        (lambda m: json.dumps({"operations": {}}), "expected"),
    ],
    ids=["stale id", "invalid document", "wrong name", "not JSON", "wrong shape"],
)
def test_a_manifest_that_cannot_be_used_is_refused(checks, trusted, text, says):
    with pytest.raises(ManifestError) as refused:
        Manifest.from_json(text(trusted), checks, "trusted-documents.json")
    message = str(refused.value)
    assert message.startswith("trusted documents: trusted-documents.json: "), message
    assert says in message and "inventory-graphql trusted-documents" in message


def test_trusted_only_is_on_in_production_unless_turned_off(tmp_path):
    assert load_trusted_documents(Settings()).only is False
    assert load_trusted_documents(Settings(production=True)).only is True
    assert not load_trusted_documents(Settings(production=True, trusted_documents_only=False)).only
    assert len(load_trusted_documents(Settings()).manifest) == 12  # the checkout's manifest
    missing = tmp_path / "none.json"
    for settings in (
        Settings(trusted_documents_only=True, trusted_documents_file=missing),
        Settings(trusted_documents_file=missing),  # asked for by name
    ):
        with pytest.raises(ManifestError, match="INVENTORY_TRUSTED_DOCUMENTS_FILE: no manifest"):
            load_trusted_documents(settings)


def refusal(trusted: TrustedDocuments, query, requested_id, admin=False) -> tuple[str, int]:
    with pytest.raises(DocumentRefused) as refused:
        trusted.admit(query, requested_id, admin=admin)
    return refused.value.code, refused.value.status


def test_what_a_request_may_run(trusted):
    only, anything = TrustedDocuments(trusted, only=True), TrustedDocuments(trusted)
    registered, other = document_id(PRODUCTS), "query Mine { products { sku } }"
    for policy in (only, anything):
        assert policy.admit(None, registered, admin=False) == PRODUCTS
        assert policy.admit(PRODUCTS, registered, admin=False) == PRODUCTS
        assert policy.admit(PRODUCTS, None, admin=False) == PRODUCTS
        assert policy.admit(None, None, admin=False) is None  # Strawberry: no query
        assert refusal(policy, None, document_id(other)) == ("PERSISTED_QUERY_NOT_FOUND", 200)
        assert refusal(policy, other, registered) == ("BAD_REQUEST", 400)
        assert refusal(policy, None, 42) == ("BAD_REQUEST", 400)
    assert refusal(only, other, None) == ("TRUSTED_DOCUMENT_REQUIRED", 200)
    assert refusal(only, PRODUCTS + " ", None) == ("TRUSTED_DOCUMENT_REQUIRED", 200)
    assert only.admit(other, None, admin=True) == other
    assert only.admit(other, document_id(other), admin=True) == other
    assert anything.admit(other, None, admin=False) == other


async def test_a_trusted_document_skips_the_parser(checks):
    probe = "query Probe { __typename }"
    trusted = Manifest([TrustedDocument.of(probe, checks)])
    seen = []

    class Seen(SchemaExtension):
        def on_validate(self):
            seen.append(self.execution_context.graphql_document)
            yield

    schema = build_schema(trusted_documents=trusted)
    schema.extensions = (*schema.extensions, Seen)
    for text in (probe, probe + " "):
        result = await schema.execute(text)
        assert result.data == {"__typename": "Query"}, result.errors
    pinned, parsed = seen
    assert pinned is trusted.document(probe) and trusted.is_pinned(pinned)
    assert not trusted.is_pinned(parsed)


def test_the_command_builds_and_checks_a_manifest(tmp_path, capsys):
    client = tmp_path / "client"
    client.mkdir()
    (client / "stock.graphql").write_text("query Stock { products { sku available } }\n")
    output = tmp_path / "manifest.json"
    assert cli.main(["trusted-documents", str(client), "--output", str(output)]) == 0
    names = {op["name"] for op in json.loads(output.read_text())["operations"]}
    assert names >= {"Stock", "Reserve", "Availability"}  # the client's and the demo's
    assert cli.main(["trusted-documents", str(client), "--output", str(output), "--check"]) == 0

    (client / "stock.graphql").write_text("query Stock { products { sku } }\n")
    assert cli.main(["trusted-documents", str(client), "--output", str(output), "--check"]) == 1
    stale = capsys.readouterr().err
    assert "is stale" in stale and "+ Stock sha256:" in stale and "- Stock sha256:" in stale

    (client / "bad.js").write_text("const Q = /* GraphQL */ `query Q { ${x} }`;\n")
    assert cli.main(["trusted-documents", str(client), "--output", str(output)]) == 2
    assert "bad.js:1: a /* GraphQL */ template literal may not interpolate" in (
        capsys.readouterr().err
    )
