// The flash-sale panel: N shoppers press "Buy" at the same moment. Each attempt is its
// own POST (as it would be from N phones); the browser sends them in parallel, the server
// grants exactly what is there, and the live count falls to 0 and no further.

import { byTestId, describeError } from "./dom.js";
import { request } from "./graphql.js";
import { formatNumber, parseInteger } from "./numbers.js";
import { RESERVE } from "./operations.js";

// The form's bounds (index.html), applied again: a typed value can be outside them.
const ATTEMPTS = { min: 1, max: 5000 };
const TTL_SECONDS = { min: 1, max: 3600 };

export class FlashSale {
  #el = {};
  #lowest = null;

  constructor(root, { catalog }) {
    this.root = root;
    this.catalog = catalog;
    for (const id of [
      "flash-form",
      "flash-sku",
      "flash-attempts",
      "flash-ttl",
      "flash-start",
      "flash-succeeded",
      "flash-failed",
      "flash-errors",
      "flash-available",
      "flash-status",
    ]) {
      this.#el[id] = byTestId(root, id);
    }
    this.#el["flash-form"].addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    this.#el["flash-sku"].addEventListener("input", () => this.#showCount());
    catalog.addEventListener("change", ({ detail: { product } }) => {
      if (product.sku !== this.#el["flash-sku"].value.trim()) return;
      if (this.#lowest !== null) this.#lowest = Math.min(this.#lowest, product.available);
      this.#showCount();
    });
  }

  /** Aim the panel at a product (the one selected in the catalog). */
  target(sku) {
    if (this.root.dataset.state === "running") return;
    this.#el["flash-sku"].value = sku;
    this.#showCount();
  }

  async run() {
    const sku = this.#el["flash-sku"].value.trim();
    const attempts = parseInteger(this.#el["flash-attempts"].value, 1, ATTEMPTS);
    const ttl = parseInteger(this.#el["flash-ttl"].value, 1, TTL_SECONDS);
    const tally = { succeeded: 0, failed: 0, errors: 0 };
    let firstError = null;
    this.#lowest = this.catalog.get(sku)?.available ?? null;
    this.#setState("running", `Sending ${formatNumber(attempts)} reservations…`);
    this.#showTally(tally);
    const started = performance.now();
    const variables = { lines: [{ sku, quantity: 1 }], ttl };

    const attempt = async () => {
      try {
        // The crowd is other shoppers, not this tab's buyer: its holds are nobody's, and
        // count against neither this buyer's limit nor its pending holds. A product with a
        // limit per buyer refuses them (BuyerRequired, an error here).
        const { reserve: result } = await request(RESERVE, variables, { anonymous: true });
        if (result.__typename === "Reservation") tally.succeeded += 1;
        else if (result.__typename === "InsufficientStock") tally.failed += 1;
        else {
          tally.errors += 1;
          firstError ??= result.message;
        }
      } catch (error) {
        tally.errors += 1;
        firstError ??= describeError(error);
      }
      this.#showTally(tally);
    };
    // All at once, on purpose: the point is the crowd arriving together.
    await Promise.all(Array.from({ length: attempts }, attempt));

    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const summary = [
      `${formatNumber(attempts)} reservations in ${seconds} s:`,
      `${formatNumber(tally.succeeded)} got one, ${formatNumber(tally.failed)} were turned away.`,
    ];
    if (this.#lowest !== null) summary.push(`Lowest count shown: ${this.#lowest}.`);
    if (firstError) summary.push(`First error: ${firstError}`);
    this.#setState("done", summary.join(" "));
  }

  #showTally({ succeeded, failed, errors }) {
    this.#el["flash-succeeded"].textContent = formatNumber(succeeded);
    this.#el["flash-failed"].textContent = formatNumber(failed);
    this.#el["flash-errors"].textContent = formatNumber(errors);
  }

  #showCount() {
    const product = this.catalog.get(this.#el["flash-sku"].value.trim());
    this.#el["flash-available"].textContent = product ? formatNumber(product.available) : "—";
  }

  #setState(state, text) {
    this.root.dataset.state = state;
    this.#el["flash-start"].disabled = state === "running";
    this.#el["flash-status"].textContent = text;
  }
}
