// Live availability of one sku with graphql-ws (the reference graphql-transport-ws
// client), and one unit reserved over HTTP with fetch, as a shop page would do both.
// Prints one JSON object per line and exits 0 once an update shows the count fallen.
//
//   npm ci --prefix examples/node-live
//   node examples/node-live/live.mjs --url http://localhost:8000 --sku CONSOLE-X
//
// A browser has WebSocket and fetch built in; Node 20 has fetch, and takes WebSocket from
// the `ws` package (Node 22 has it built in too).
import { parseArgs } from "node:util";
import { createClient } from "graphql-ws";

const AVAILABILITY = `
subscription Availability($skus: [String!]!) {
  availability(skus: $skus) { sku quantity reserved available version }
}`;

const RESERVE = `
mutation Reserve($lines: [ReserveLineInput!]!, $ttl: Int, $key: String) {
  reserve(lines: $lines, ttlSeconds: $ttl, idempotencyKey: $key) {
    __typename
    ... on Reservation { id status expiresAt lines { sku quantity } }
    ... on InsufficientStock { sku requested available }
    ... on Problem { message }
  }
}`;

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: "http://localhost:8000" },
    sku: { type: "string" },
    token: { type: "string", default: process.env.INVENTORY_TOKEN },
    timeout: { type: "string", default: "15" },
  },
});
if (!args.sku) {
  console.error("usage: node live.mjs --url http://localhost:8000 --sku SKU [--token TOKEN]");
  process.exit(64);
}

const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).WebSocket;
const endpoint = `${args.url.replace(/\/$/, "")}/graphql`;
// A page cannot set headers on a WebSocket: the token travels in connection_init.
const authorization = args.token ? { authorization: `Bearer ${args.token}` } : undefined;

const print = (event, fields) => console.log(JSON.stringify({ event, ...fields }));

const client = createClient({
  url: endpoint.replace(/^http/, "ws"),
  webSocketImpl: WebSocketImpl,
  connectionParams: authorization ?? {},
  retryAttempts: 3,
  on: { connected: () => print("connected", {}) },
});

async function reserve(sku) {
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "content-type": "application/json", ...authorization },
    body: JSON.stringify({
      query: RESERVE,
      // The key makes a retried reserve (a lost answer) return the same hold.
      variables: {
        lines: [{ sku, quantity: 1 }],
        ttl: 300,
        key: `node-live-${crypto.randomUUID()}`,
      },
    }),
  });
  const body = await response.json();
  if (!response.ok || body.errors)
    throw new Error(`reserve: ${response.status} ${JSON.stringify(body)}`);
  return body.data.reserve;
}

async function main() {
  const timer = setTimeout(() => {
    print("timeout", { seconds: Number(args.timeout) });
    process.exit(1);
  }, Number(args.timeout) * 1000);
  let first = null;
  const updates = client.iterate({ query: AVAILABILITY, variables: { skus: [args.sku] } });
  for await (const result of updates) {
    if (result.errors) throw new Error(JSON.stringify(result.errors));
    const update = result.data.availability;
    print("availability", { availability: update });
    if (first === null) {
      // The first message is the snapshot: now reserve, and watch the count fall.
      first = update;
      const held = await reserve(args.sku);
      print("reserved", { reservation: held });
      if (held.__typename !== "Reservation") return 1;
    } else if (update.available < first.available) {
      print("fell", { from: first.available, to: update.available });
      clearTimeout(timer);
      return 0;
    }
  }
  return 1;
}

let code = 1;
try {
  code = await main();
} catch (error) {
  print("error", { message: String(error?.message ?? error) });
} finally {
  await client.dispose();
}
process.exit(code);
