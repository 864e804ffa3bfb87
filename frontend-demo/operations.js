// Every GraphQL document the page sends, each one `/* GraphQL */` template literal written
// out in full (no `${}`): `inventory-graphql trusted-documents` registers them by the
// SHA-256 of their exact text in trusted-documents.json, so a server that runs trusted
// documents only still runs these. Values always travel as variables, never inside the
// text: the server knows a fixed set of documents, parsed and validated once each.

export const PRODUCTS = /* GraphQL */ `
query Products($skus: [String!], $first: Int) {
  products(skus: $skus, first: $first) { sku name quantity reserved available version }
}`;

export const AVAILABILITY = /* GraphQL */ `
subscription Availability($skus: [String!]!) {
  availability(skus: $skus) { sku quantity reserved available version updatedAt }
}`;

export const RESERVE = /* GraphQL */ `
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

// A hold's state: first as it is, then after every change, until it ends. The mutations
// on a hold answer the same selection, written out in each (no `${}` to share it).
export const HOLD = /* GraphQL */ `
subscription Hold($id: ID!) {
  reservation(id: $id) {
    id status createdAt expiresAt resolvedAt
    lines { sku quantity confirmedQuantity releasedQuantity }
  }
}`;

export const EXTEND = /* GraphQL */ `
mutation Extend($id: ID!, $ttl: Int!) {
  extendReservation(id: $id, ttlSeconds: $ttl) {
    __typename
    ... on Problem { message }
    ... on Reservation {
      id status createdAt expiresAt resolvedAt
      lines { sku quantity confirmedQuantity releasedQuantity }
    }
    ... on ReservationNotFound { id }
    ... on ReservationNotPending { id status }
    ... on HoldLimitReached { id maxExpiresAt }
    ... on InvalidInput { field }
  }
}`;

export const CONFIRM = /* GraphQL */ `
mutation Confirm($id: ID!) {
  confirm(id: $id) {
    __typename
    ... on Problem { message }
    ... on Reservation {
      id status createdAt expiresAt resolvedAt
      lines { sku quantity confirmedQuantity releasedQuantity }
    }
    ... on ReservationNotFound { id }
    ... on ReservationNotPending { id status }
    ... on InvalidInput { field }
  }
}`;

// Without $lines the whole hold ("Payment fails"); with them, those units (a stepper).
export const RELEASE = /* GraphQL */ `
mutation Release($id: ID!, $lines: [ReserveLineInput!]) {
  release(id: $id, lines: $lines) {
    __typename
    ... on Problem { message }
    ... on Reservation {
      id status createdAt expiresAt resolvedAt
      lines { sku quantity confirmedQuantity releasedQuantity }
    }
    ... on ReservationNotFound { id }
    ... on ReservationNotPending { id status }
    ... on InvalidInput { field }
  }
}`;

export const CREATE_PRODUCT = /* GraphQL */ `
mutation CreateProduct($sku: String!, $name: String!, $quantity: Int!) {
  createProduct(sku: $sku, name: $name, quantity: $quantity) {
    __typename
    ... on Problem { message }
    ... on Product { sku name quantity reserved available version }
    ... on ProductNotFound { sku }
    ... on ProductExists { sku }
    ... on InvalidInput { field }
  }
}`;

export const ADJUST_STOCK = /* GraphQL */ `
mutation AdjustStock($sku: String!, $delta: Int!, $reason: String!) {
  adjustStock(sku: $sku, delta: $delta, reason: $reason) {
    __typename
    ... on Problem { message }
    ... on Product { sku name quantity reserved available version }
    ... on ProductNotFound { sku }
    ... on ProductExists { sku }
    ... on InvalidInput { field }
  }
}`;
