"""The GraphQL layer: turns requests into service calls and outcomes into types."""
