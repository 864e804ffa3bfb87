// Every GraphQL document the page sends, each one `/* GraphQL */` template literal written
// out in full (no `${}`): `inventory-graphql trusted-documents` registers them by the
// SHA-256 of their exact text in trusted-documents.json, so a server that runs trusted
// documents only still runs these. Values always travel as variables, never inside the
// text: the server knows a fixed set of documents, parsed and validated once each.

export const PRODUCTS = /* GraphQL */ `
query Products($skus: [String!], $first: Int) {
  products(skus: $skus, first: $first) {
    sku name quantity reserved available version purchaseLimit waiting
  }
}`;

export const AVAILABILITY = /* GraphQL */ `
subscription Availability($skus: [String!]!) {
  availability(skus: $skus) { sku quantity reserved available version updatedAt waiting }
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
    ... on PurchaseLimitExceeded { sku limit alreadyHeld }
    ... on BuyerRequired { sku }
    ... on TooManyPendingHolds { limit }
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

// A place in a sku's waiting list: joining, leaving, and following it live (its position,
// then the hold it is offered, which the checkout takes over). Each writes the entry's
// selection out in full.
export const JOIN_WAITLIST = /* GraphQL */ `
mutation JoinWaitlist($sku: String!, $quantity: Int!) {
  joinWaitlist(sku: $sku, quantity: $quantity) {
    __typename
    ... on Problem { message }
    ... on WaitlistEntry {
      id sku quantity status position
      reservation { id status createdAt expiresAt lines { sku quantity } }
    }
    ... on ProductNotFound { sku }
    ... on InvalidInput { field }
    ... on PurchaseLimitExceeded { sku limit alreadyHeld }
    ... on BuyerRequired { sku }
  }
}`;

export const LEAVE_WAITLIST = /* GraphQL */ `
mutation LeaveWaitlist($id: ID!) {
  leaveWaitlist(id: $id) {
    __typename
    ... on Problem { message }
    ... on WaitlistEntry {
      id sku quantity status position
      reservation { id status createdAt expiresAt lines { sku quantity } }
    }
    ... on WaitlistEntryNotFound { id }
    ... on InvalidInput { field }
  }
}`;

export const WAITLIST_PLACE = /* GraphQL */ `
subscription WaitlistPlace($id: ID!) {
  waitlistEntry(id: $id) {
    id sku quantity status position
    reservation { id status createdAt expiresAt lines { sku quantity } }
  }
}`;

export const CREATE_PRODUCT = /* GraphQL */ `
mutation CreateProduct($sku: String!, $name: String!, $quantity: Int!) {
  createProduct(sku: $sku, name: $name, quantity: $quantity) {
    __typename
    ... on Problem { message }
    ... on Product { sku name quantity reserved available version purchaseLimit waiting }
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
    ... on Product { sku name quantity reserved available version purchaseLimit waiting }
    ... on ProductNotFound { sku }
    ... on ProductExists { sku }
    ... on InvalidInput { field }
  }
}`;
