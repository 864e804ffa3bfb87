"""Fault tests that kill connections or lock rows get a database of their own
(`own_database`, `own_db` in tests/conftest.py), so what they do to it
(pg_terminate_backend by database, row locks) touches nothing else."""
