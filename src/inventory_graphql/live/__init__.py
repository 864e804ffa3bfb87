"""Live availability: PostgreSQL NOTIFY -> listener -> hub -> subscriptions."""
