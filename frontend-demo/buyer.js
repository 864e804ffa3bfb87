// The buyer switcher: "You are buyer 7". A buyer token (an HS256 JWT the shop's backend
// signs) names who is shopping: holds, idempotency keys, purchase limits and waiting-list
// places are that buyer's. In the demo (`serve --demo`) the page asks the demo-only route
// /demo/buyer-token?buyer=N, standing in for the shop's backend; elsewhere a token from
// `inventory-graphql buyer-token N` comes in with ?buyerToken=T. Either way it is kept in
// this tab's session storage, so each tab can be another buyer.

import { byTestId } from "./dom.js";
import { parseInteger } from "./numbers.js";

const TOKEN_ROUTE = new URL("/demo/buyer-token", location.href);
export const MAX_BUYER = 100000; // the demo route's bound too
const RENEW_BEFORE_MS = 60000; // a demo token is renewed this long before it expires
const RENEW_AFTER_REFUSAL_MS = 10000; // at most once per this, if the server refuses one

/** Events: "change" (detail: {buyer, token, previous}) when another buyer takes over. */
export class BuyerSwitcher extends EventTarget {
  #el = {};
  #renew = 0;
  #fromDemo = false;
  #refusedAt = -Infinity;
  buyer = null; // the buyer id (the token's `sub`), or null: anonymous
  token = null;

  /** `note` shows why a token could not be had. */
  constructor(root, { note }) {
    super();
    for (const id of ["buyer-name", "buyer-form", "buyer-input", "buyer-switch"]) {
      this.#el[id] = byTestId(root, id);
    }
    this.#el["buyer-note"] = note;
    this.#el["buyer-form"].addEventListener("submit", (event) => {
      event.preventDefault();
      const buyer = parseInteger(this.#el["buyer-input"].value, null);
      if (buyer === null || buyer < 1 || buyer > MAX_BUYER) {
        this.#note(`A buyer is a number from 1 to ${MAX_BUYER}.`);
        return;
      }
      this.switchTo(String(buyer));
    });
  }

  /** Who this tab is: `requested` (?buyer=N), else the buyer it was, else a new demo
   * buyer. Resolves once the token is known (or known to be unavailable). */
  async start({ requested = null, token = null } = {}) {
    if (token) {
      sessionStorage.setItem("buyerToken", token); // from ?buyerToken=: the CLI's
      sessionStorage.removeItem("buyerFromDemo");
    }
    const stored = sessionStorage.getItem("buyerToken");
    if (requested === null && stored && !expiresSoon(stored)) {
      this.#use(stored, { fromDemo: sessionStorage.getItem("buyerFromDemo") === "1" });
      return;
    }
    // A new tab is a new shopper: any buyer from 1 to 99, switchable.
    const buyer = requested ?? sessionStorage.getItem("buyer") ?? String(1 + randomBelow(99));
    if (!(await this.#fetch(buyer))) this.#use(null, { fromDemo: false });
  }

  /** Become `buyer` (a demo token for it). */
  async switchTo(buyer) {
    this.#el["buyer-switch"].disabled = true;
    try {
      if (!(await this.#fetch(buyer))) {
        this.#note("Buyer tokens come from the shop's backend: this server is not in demo mode.");
      }
    } finally {
      this.#el["buyer-switch"].disabled = false;
    }
  }

  /** A new demo token for the same buyer after the server refused this one (a demo
   * server restarted with a new random secret); false when there is none to be had. */
  async renew() {
    const now = performance.now();
    if (!this.#fromDemo || this.buyer === null || now - this.#refusedAt < RENEW_AFTER_REFUSAL_MS) {
      return false;
    }
    this.#refusedAt = now;
    return this.#fetch(this.buyer);
  }

  /** A token for `buyer` from the demo route; false when the server has none to give. */
  async #fetch(buyer, { renewing = false } = {}) {
    let body = null;
    try {
      const url = new URL(TOKEN_ROUTE);
      url.searchParams.set("buyer", buyer);
      const response = await fetch(url, { headers: { accept: "application/json" } });
      if (!response.ok) {
        // 404: not a demo server. 400: a buyer the route does not take.
        if (response.status !== 404) this.#note((await response.text()).trim());
        return false;
      }
      body = await response.json();
    } catch {
      this.#note("Cannot reach the server for a buyer token. Try again in a moment.");
      return false;
    }
    this.#use(body.token, { fromDemo: true, quiet: renewing });
    return true;
  }

  #use(token, { fromDemo, quiet = false }) {
    const previous = this.buyer;
    const buyer = token ? subject(token) : null;
    this.token = token;
    this.buyer = buyer;
    this.#fromDemo = Boolean(token) && fromDemo;
    if (token) {
      sessionStorage.setItem("buyerToken", token);
      sessionStorage.setItem("buyer", buyer);
      sessionStorage.setItem("buyerFromDemo", fromDemo ? "1" : "0");
    }
    this.#el["buyer-name"].textContent = buyer ? `You are buyer ${buyer}` : "Anonymous shopper";
    this.#el["buyer-name"].dataset.buyer = buyer ?? "";
    this.#el["buyer-input"].value = buyer ?? "";
    this.#el["buyer-form"].hidden = !fromDemo;
    this.#note("");
    clearTimeout(this.#renew);
    const exp = token ? expiry(token) : null;
    if (fromDemo && exp !== null) {
      // Renewed before it expires; the same buyer, so nothing else changes.
      const wait = Math.max(1000, exp - Date.now() - RENEW_BEFORE_MS);
      this.#renew = setTimeout(() => this.#fetch(buyer, { renewing: true }), wait);
    }
    if (!quiet) {
      this.dispatchEvent(new CustomEvent("change", { detail: { buyer, token, previous } }));
    }
  }

  #note(text) {
    const note = this.#el["buyer-note"];
    note.textContent = text;
    note.hidden = !text;
  }
}

/** A JWT's claims, read (not verified: the server does that) for the page to show. */
function claims(token) {
  try {
    const part = token.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    return JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
  } catch {
    return {};
  }
}

function subject(token) {
  const { sub } = claims(token);
  return typeof sub === "string" && sub ? sub : "?";
}

/** When the token expires, in ms since the epoch, or null when it does not say. */
function expiry(token) {
  const { exp } = claims(token);
  return typeof exp === "number" ? exp * 1000 : null;
}

function expiresSoon(token) {
  const exp = expiry(token);
  return exp !== null && exp - Date.now() < RENEW_BEFORE_MS;
}

function randomBelow(n) {
  return crypto.getRandomValues(new Uint32Array(1))[0] % n;
}
