"""The inventory service: stock, holds and their lifecycle. Knows nothing of GraphQL."""
