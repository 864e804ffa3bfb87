// A tiny GraphQL client: POST JSON for queries and mutations, and graphql-transport-ws
// over one WebSocket for subscriptions, reconnecting by itself.

const ENDPOINT = new URL("/graphql", location.href);

/** A failed request: top-level GraphQL errors (a bad document, a missing token, a
 * server fault; never the typed outcomes), or an HTTP error without them. */
export class RequestError extends Error {
  constructor(message, { status, errors = [] }) {
    super(message);
    this.status = status;
    this.errors = errors;
  }
}

// The storefront token, when the server requires one (INVENTORY_STOREFRONT_TOKEN), and
// the buyer's token (buyer.js): sent with every request, and in connection_init since
// browsers cannot set WebSocket headers. A buyer token names who is shopping, so it goes
// in place of the storefront token when the page has one.
let storefrontToken = null;
let buyerToken = null;

export function setStorefrontToken(token) {
  storefrontToken = token || null;
}

export function setBuyerToken(token) {
  buyerToken = token || null;
}

function authorization(buyer = buyerToken) {
  const token = buyer ?? storefrontToken;
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** POST one document with its variables; resolves to `data`, throws on any error.
 * `headers` win over the tokens (the admin panel sends its own); `anonymous` leaves the
 * buyer's token out (the storefront token, if any, still goes). */
export async function request(query, variables = {}, { headers = {}, anonymous = false } = {}) {
  const response = await fetch(ENDPOINT, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json",
      ...(anonymous ? authorization(null) : authorization()),
      ...headers,
    },
    body: JSON.stringify({ query, variables }),
  });
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // A plain-text refusal (401, 413, a proxy's 502): its text is the best message.
  }
  const status = response.status;
  if (body?.errors?.length) {
    throw new RequestError(body.errors.map((e) => e.message).join("; "), {
      status,
      errors: body.errors,
    });
  }
  if (!response.ok || !body) {
    throw new RequestError(text.trim() || `HTTP ${status} ${response.statusText}`, { status });
  }
  return body.data;
}

const PROTOCOL = "graphql-transport-ws";
const utf8 = new TextDecoder();
const ACK_TIMEOUT_MS = 5000;
// A server that vanished without closing the TCP connection (laptop lid, NAT timeout)
// is only noticed by asking: ping every so often, give up on the socket if no pong.
const PING_EVERY_MS = 15000;
const PONG_TIMEOUT_MS = 5000;

/**
 * One WebSocket carrying any number of subscriptions. Subscriptions outlive the socket:
 * after a reconnect they are sent again, and their first messages (for `availability`,
 * a snapshot per sku) bring the page back in sync with whatever it missed.
 *
 * Events: "status" (detail: {state: "connecting" | "live" | "reconnecting"}),
 * "connected" (detail: {reconnect: boolean}) after each connection_ack, "rejected"
 * when the server refuses the connection (4403: a storefront token is needed).
 */
export class LiveSocket extends EventTarget {
  #url;
  #ws = null;
  #subscriptions = new Map(); // id -> {query, variables, next, error}
  #nextId = 1;
  #attempt = 0;
  #everConnected = false;
  #timers = { retry: 0, ack: 0, ping: 0, pong: 0 };

  constructor({ minDelayMs = 250, maxDelayMs = 4000 } = {}) {
    super();
    const url = new URL(ENDPOINT);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    this.#url = url.href;
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.state = "connecting";
    // Back online after a network change: try now rather than at the end of a backoff.
    addEventListener("online", () => {
      if (this.state === "reconnecting") this.#reconnectNow();
    });
  }

  start() {
    this.#connect();
  }

  /** Subscribe until `unsubscribe()`; `next(data)` per result, `error(errors)` ends it. */
  subscribe(query, variables, { next, error = () => {} }) {
    const id = String(this.#nextId++);
    this.#subscriptions.set(id, { query, variables, next, error });
    if (this.state === "live") this.#send({ id, type: "subscribe", payload: { query, variables } });
    return {
      unsubscribe: () => {
        if (this.#subscriptions.delete(id) && this.state === "live") {
          this.#send({ id, type: "complete" });
        }
      },
    };
  }

  /** Connect again at once, e.g. with another buyer's token in connection_init: the
   * subscriptions still open are sent again after the new connection_ack. */
  restart() {
    clearTimeout(this.#timers.retry);
    this.#attempt = 0;
    const ws = this.#ws;
    if (ws !== null) {
      this.#ws = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
    }
    for (const name of ["ack", "ping", "pong"]) clearTimeout(this.#timers[name]);
    this.#connect();
    this.#setStatus("connecting"); // asked for, not lost: no "reconnecting" banner
  }

  #connect() {
    this.#setStatus(this.#everConnected ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.#url, PROTOCOL);
    // The protocol sends JSON as text frames, but a server may use binary ones (an
    // encoder that returns bytes): take both.
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    ws.onopen = () => {
      this.#send({ type: "connection_init", payload: authorization() });
      this.#timers.ack = setTimeout(() => this.#drop(ws), ACK_TIMEOUT_MS);
    };
    ws.onmessage = ({ data }) => {
      let message;
      try {
        message = JSON.parse(typeof data === "string" ? data : utf8.decode(data));
      } catch {
        return; // not JSON: nothing this client could act on
      }
      this.#receive(message);
    };
    ws.onclose = (event) => {
      if (event.code === 4403) this.dispatchEvent(new CustomEvent("rejected"));
      this.#drop(ws);
    };
    ws.onerror = () => {}; // onclose follows and handles it
  }

  #receive(message) {
    switch (message.type) {
      case "connection_ack": {
        clearTimeout(this.#timers.ack);
        this.#attempt = 0;
        const reconnect = this.#everConnected;
        this.#everConnected = true;
        this.#setStatus("live");
        for (const [id, { query, variables }] of this.#subscriptions) {
          this.#send({ id, type: "subscribe", payload: { query, variables } });
        }
        this.#schedulePing();
        this.dispatchEvent(new CustomEvent("connected", { detail: { reconnect } }));
        break;
      }
      case "next": {
        const sub = this.#subscriptions.get(message.id);
        if (!sub) break;
        if (message.payload.errors?.length) {
          this.#subscriptions.delete(message.id);
          sub.error(message.payload.errors);
        } else {
          sub.next(message.payload.data);
        }
        break;
      }
      case "error": {
        const sub = this.#subscriptions.get(message.id);
        this.#subscriptions.delete(message.id);
        sub?.error(message.payload);
        break;
      }
      case "complete":
        this.#subscriptions.delete(message.id);
        break;
      case "ping":
        this.#send({ type: "pong" });
        break;
      case "pong":
        clearTimeout(this.#timers.pong);
        this.#schedulePing();
        break;
    }
  }

  #schedulePing() {
    clearTimeout(this.#timers.ping);
    this.#timers.ping = setTimeout(() => {
      const ws = this.#ws;
      this.#send({ type: "ping" });
      this.#timers.pong = setTimeout(() => this.#drop(ws), PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  /** Forget a socket (closed, silent or never acked) and plan the next attempt. */
  #drop(ws) {
    if (ws !== this.#ws) return; // an old socket's late event
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState <= WebSocket.OPEN) ws.close();
    for (const name of ["ack", "ping", "pong"]) clearTimeout(this.#timers[name]);
    // Exponential backoff with jitter, so a restarted server is not hit by every page at
    // the same instant; capped so a page recovers within seconds of the server's return.
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.#attempt++);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.#setStatus("reconnecting");
    this.#timers.retry = setTimeout(() => this.#connect(), delay);
  }

  #reconnectNow() {
    clearTimeout(this.#timers.retry);
    this.#attempt = 0;
    if (this.#ws === null) this.#connect();
  }

  #send(message) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(message));
  }

  #setStatus(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state } }));
  }
}
