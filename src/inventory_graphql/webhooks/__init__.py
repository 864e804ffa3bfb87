"""Webhooks: the stock event feed delivered to HTTP endpoints, signed (Standard Webhooks)."""
