// The benchmark peer (bench.peer_postgraphile): PostGraphile 5 in library mode on Node's
// own http server, exposing the schema `peer` (reserve.sql) of DATABASE_URL, at
// http://127.0.0.1:PEER_PORT/graphql.
//
//   DATABASE_URL=postgresql://... PEER_PORT=5678 PEER_WORKERS=2 node server.mjs
//
// PEER_WORKERS processes: one serves alone; more are Node `cluster` workers behind a
// primary that hands out connections round robin (Node's default on Linux; wrk's
// connections are kept alive, so the primary works only when they open). PEER_POOL sets
// each process's pg pool size (default: pg's, 10). Once every process is listening with
// its schema built, PEER_READY_FILE is written. SIGTERM stops them all.

import cluster from "node:cluster";
import { writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { postgraphile } from "postgraphile";
import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";

const workers = Number(process.env.PEER_WORKERS ?? "1");
const port = Number(process.env.PEER_PORT);
const readyFile = process.env.PEER_READY_FILE;

function ready() {
  if (readyFile) {
    writeFileSync(readyFile, `${process.pid}\n`);
  }
}

async function serve() {
  const pool = process.env.PEER_POOL ? { max: Number(process.env.PEER_POOL) } : undefined;
  const preset = {
    extends: [PostGraphileAmberPreset],
    pgServices: [
      makePgService({
        connectionString: process.env.DATABASE_URL,
        schemas: ["peer"],
        poolConfig: pool,
      }),
    ],
    grafserv: { port, host: "127.0.0.1", graphiql: false },
    grafast: { explain: false },
  };
  const pgl = postgraphile(preset);
  const serv = pgl.createServ(grafserv);
  await pgl.getSchema(); // built before the first request, not by it
  const server = createServer();
  await serv.addTo(server);
  server.listen({ port, host: "127.0.0.1" }, () => {
    if (cluster.isWorker) {
      process.send("listening");
    } else {
      ready();
    }
  });
}

function supervise() {
  let listening = 0;
  let stopping = false;
  cluster.on("message", (_worker, message) => {
    listening += message === "listening" ? 1 : 0;
    if (listening === workers) {
      ready();
    }
  });
  cluster.on("exit", (worker, code) => {
    if (!stopping) {
      console.error(`peer worker ${worker.process.pid} exited (${code}): stopping`);
      process.exit(1);
    }
  });
  process.on("SIGTERM", () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) {
      worker.kill("SIGTERM");
    }
    cluster.disconnect(() => process.exit(0));
  });
  for (let i = 0; i < workers; i++) {
    cluster.fork();
  }
}

if (workers > 1 && cluster.isPrimary) {
  supervise();
} else {
  serve().catch((error) => {
    console.error("peer server failed:", error);
    process.exit(1);
  });
}
