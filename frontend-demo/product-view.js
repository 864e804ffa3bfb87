// The product view: the selected product's live numbers, its limit per buyer, a quantity
// picker and "Reserve"; when sold out, the waiting list (waitlist.js).

import { stockBadge, stockState } from "./catalog.js";
import { byTestId, describeError, flash } from "./dom.js";
import { request } from "./graphql.js";
import { formatNumber, parseInteger } from "./numbers.js";
import { RESERVE } from "./operations.js";
import { Waitlist } from "./waitlist.js";

export class ProductView {
  #el = {};
  #sku = null;

  /** `checkout.add(reservation)` receives every hold made here. */
  constructor(root, { catalog, checkout, socket, ttlSeconds }) {
    this.root = root;
    this.catalog = catalog;
    this.checkout = checkout;
    for (const id of [
      "product-view-empty",
      "product-view-body",
      "product-view-name",
      "product-view-sku",
      "product-view-available",
      "product-view-detail",
      "purchase-limit",
      "product-view-badge",
      "reserve-form",
      "quantity",
      "quantity-less",
      "quantity-more",
      "ttl",
      "reserve",
      "reserve-message",
    ]) {
      this.#el[id] = byTestId(root, id);
    }
    this.#el.ttl.value = ttlSeconds;
    this.waitlist = new Waitlist(byTestId(root, "waitlist"), {
      socket,
      checkout,
      quantity: () => parseInteger(this.#el.quantity.value, 0),
    });
    this.#el["quantity-less"].addEventListener("click", () => this.#step(-1));
    this.#el["quantity-more"].addEventListener("click", () => this.#step(+1));
    this.#el["reserve-form"].addEventListener("submit", (event) => {
      event.preventDefault();
      this.#reserve();
    });
    catalog.addEventListener("change", ({ detail: { product, previous } }) => {
      if (product.sku !== this.#sku) return;
      this.#paint(product);
      if (product.available === previous.available) return;
      flash(
        this.#el["product-view-available"],
        product.available < previous.available ? "flash-down" : "flash-up",
      );
    });
  }

  get sku() {
    return this.#sku;
  }

  show(sku) {
    const product = this.catalog.get(sku);
    if (!product) return;
    if (sku !== this.#sku) this.#say("", "");
    this.#sku = sku;
    delete this.root.dataset.empty; // a phone shows this panel only once it has a product
    this.#el["product-view-empty"].hidden = true;
    this.#el["product-view-body"].hidden = false;
    this.#el["product-view-name"].textContent = product.name;
    this.#el["product-view-sku"].textContent = product.sku;
    this.#paint(product);
  }

  /** Another buyer is shopping: its own waiting-list places, none of the last answers. */
  switchBuyer(buyer) {
    this.#say("", "");
    this.waitlist.switchBuyer(buyer);
  }

  #paint(product) {
    const state = stockState(product.available);
    this.#el["product-view-body"].dataset.state = state;
    this.#el["product-view-available"].textContent = formatNumber(product.available);
    const { quantity, reserved } = product;
    const queue = product.waiting > 0 ? ` · ${formatNumber(product.waiting)} wanted in line` : "";
    this.#el["product-view-detail"].textContent =
      `${formatNumber(quantity)} on hand · ${formatNumber(reserved)} held by shoppers${queue}`;
    const limit = this.#el["purchase-limit"];
    limit.hidden = product.purchaseLimit == null;
    limit.textContent = limit.hidden ? "" : `Limit ${product.purchaseLimit} per buyer`;
    this.waitlist.show(product);
    const badge = this.#el["product-view-badge"];
    badge.textContent = stockBadge(state);
    badge.hidden = !badge.textContent;
  }

  #step(delta) {
    const input = this.#el.quantity;
    // Empty, 0 or not a number: step from 1.
    input.value = Math.max(1, (parseInteger(input.value, 0) || 1) + delta);
  }

  async #reserve() {
    const sku = this.#sku;
    // Not a number: quantity 0, which the server refuses with a readable InvalidInput;
    // no ttl, which means the server's default hold.
    const quantity = parseInteger(this.#el.quantity.value, 0);
    const ttl = parseInteger(this.#el.ttl.value, null);
    // The button stays usable when the count shows 0: the count can be a few
    // milliseconds stale, and the server, not the page, decides who gets stock.
    const button = this.#el.reserve;
    button.disabled = true;
    this.#say("Reserving…", "pending");
    try {
      const { reserve: result } = await request(RESERVE, {
        lines: [{ sku, quantity }],
        ttl,
      });
      if (result.__typename === "Reservation") this.checkout.add(result);
      // The shopper may have moved to another product meanwhile; the hold is listed anyway.
      if (sku === this.#sku) this.#say(describeReserve(result), result.__typename);
    } catch (error) {
      this.#say(describeError(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  #say(text, outcome) {
    const message = this.#el["reserve-message"];
    message.textContent = text;
    message.dataset.outcome = outcome;
  }
}

/** What the shopper reads for each member of ReserveResult. */
export function describeReserve(result) {
  switch (result.__typename) {
    case "Reservation": {
      const units = result.lines.reduce((sum, line) => sum + line.quantity, 0);
      return `Reserved ${units} for you. Finish checkout before the timer runs out.`;
    }
    case "InsufficientStock":
      return result.available === 0
        ? `Sold out: 0 left (you asked for ${result.requested}).`
        : `Only ${result.available} left (you asked for ${result.requested}).`;
    case "PurchaseLimitExceeded":
      return `Limit ${result.limit} per buyer: you already have ${result.alreadyHeld}, so you cannot reserve more.`;
    case "BuyerRequired":
      return "This product has a limit per buyer: pick a buyer at the top to reserve it.";
    default:
      // ProductNotFound, InvalidInput, IdempotencyKeyReused, TooManyPendingHolds
      return result.message;
  }
}
