"""GraphQL documents the tests send, always with variables, as real clients should."""

RESERVE = """
mutation Reserve($lines: [ReserveLineInput!]!, $ttl: Int, $key: String) {
  reserve(lines: $lines, ttlSeconds: $ttl, idempotencyKey: $key) {
    __typename
    ... on Reservation { id status expiresAt createdAt resolvedAt lines { sku quantity } }
    ... on InsufficientStock { sku requested available }
    ... on ProductNotFound { sku }
    ... on InvalidInput { field }
    ... on IdempotencyKeyReused { idempotencyKey }
    ... on Problem { message }
  }
}
"""

RESOLVE_FIELDS = """
    __typename
    ... on Reservation { id status resolvedAt lines { sku quantity product { available } } }
    ... on ReservationNotFound { id }
    ... on ReservationNotPending { id status }
    ... on Problem { message }
"""

CONFIRM = f"mutation Confirm($id: ID!) {{ confirm(id: $id) {{ {RESOLVE_FIELDS} }} }}"
RELEASE = f"mutation Release($id: ID!) {{ release(id: $id) {{ {RESOLVE_FIELDS} }} }}"

PRODUCT_FIELDS = "sku name quantity reserved available version updatedAt"

PRODUCT_RESULT = f"""
    __typename
    ... on Product {{ {PRODUCT_FIELDS} }}
    ... on ProductNotFound {{ sku }}
    ... on ProductExists {{ sku }}
    ... on InvalidInput {{ field }}
    ... on Problem {{ message }}
"""

CREATE_PRODUCT = f"""
mutation Create($sku: String!, $name: String!, $quantity: Int!) {{
  createProduct(sku: $sku, name: $name, quantity: $quantity) {{ {PRODUCT_RESULT} }}
}}
"""

ADJUST_STOCK = f"""
mutation Adjust($sku: String!, $delta: Int!, $reason: String!) {{
  adjustStock(sku: $sku, delta: $delta, reason: $reason) {{ {PRODUCT_RESULT} }}
}}
"""

PRODUCT = f"query Product($sku: String!) {{ product(sku: $sku) {{ {PRODUCT_FIELDS} }} }}"

PRODUCTS = f"""
query Products($skus: [String!], $first: Int) {{
  products(skus: $skus, first: $first) {{ {PRODUCT_FIELDS} }}
}}
"""

RESERVATION = """
query Reservation($id: ID!) {
  reservation(id: $id) { id status expiresAt resolvedAt lines { sku quantity product { sku } } }
}
"""

# Every field of a StockEvent, as the feed's query and subscription select it.
EVENT_FIELDS = """
cursor kind sku quantityDelta reservedDelta quantity reserved available version
reservationId reason reference actor occurredAt
"""
