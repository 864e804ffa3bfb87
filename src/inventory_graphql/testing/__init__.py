"""Support for tests and benchmarks, shipped with the package (as `starlette.testclient` is):
a launcher for `inventory-graphql serve` in its own process (`testing.server`) and a small
graphql-transport-ws client (`testing.graphql_ws`).

The server never imports this package. `testing.graphql_ws` needs aiohttp, which the `test`
and `bench` extras install; `testing.server` needs only the standard library.
"""
