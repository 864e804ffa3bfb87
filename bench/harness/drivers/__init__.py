"""Load generators, each in a process of its own where it can be: pgbench (the database's
own ceiling), wrk (the service over HTTP, with reserve.lua) and a raw asyncpg loop."""
