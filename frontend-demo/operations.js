// Every GraphQL document the page sends. Values always travel as variables, never inside
// the text: the server caches parsed and validated documents by their exact text, so a
// fixed set of documents costs one parse each for the life of the server.

const PRODUCT_FIELDS = "sku name quantity reserved available version";

export const PRODUCTS = `
query Products($skus: [String!], $first: Int) {
  products(skus: $skus, first: $first) { ${PRODUCT_FIELDS} }
}`;

export const AVAILABILITY = `
subscription Availability($skus: [String!]!) {
  availability(skus: $skus) { sku quantity reserved available version updatedAt }
}`;

export const RESERVE = `
mutation Reserve($lines: [ReserveLineInput!]!, $ttl: Int) {
  reserve(lines: $lines, ttlSeconds: $ttl) {
    __typename
    ... on Problem { message }
    ... on Reservation { id status createdAt expiresAt lines { sku quantity } }
    ... on InsufficientStock { sku requested available }
    ... on ProductNotFound { sku }
    ... on InvalidInput { field }
    ... on IdempotencyKeyReused { idempotencyKey }
  }
}`;

const RESOLVE_FIELDS = `
    __typename
    ... on Problem { message }
    ... on Reservation { id status resolvedAt }
    ... on ReservationNotFound { id }
    ... on ReservationNotPending { id status }`;

export const CONFIRM = `
mutation Confirm($id: ID!) { confirm(id: $id) { ${RESOLVE_FIELDS} } }`;

export const RELEASE = `
mutation Release($id: ID!) { release(id: $id) { ${RESOLVE_FIELDS} } }`;

const PRODUCT_RESULT = `
    __typename
    ... on Problem { message }
    ... on Product { ${PRODUCT_FIELDS} }
    ... on ProductNotFound { sku }
    ... on ProductExists { sku }
    ... on InvalidInput { field }`;

export const CREATE_PRODUCT = `
mutation CreateProduct($sku: String!, $name: String!, $quantity: Int!) {
  createProduct(sku: $sku, name: $name, quantity: $quantity) { ${PRODUCT_RESULT} }
}`;

export const ADJUST_STOCK = `
mutation AdjustStock($sku: String!, $delta: Int!, $reason: String!) {
  adjustStock(sku: $sku, delta: $delta, reason: $reason) { ${PRODUCT_RESULT} }
}`;
