// The catalog: one card per product, kept current by version. Queries, mutation results
// and subscription messages all go through `show`, which ignores anything not newer than
// what is on screen: messages from a snapshot, a re-fetch and a live update can arrive in
// any order, and the count must never step back.

import { flash, h } from "./dom.js";
import { formatNumber } from "./numbers.js";

export const LOW_STOCK = 5;

/** "sold-out" | "low" | "in-stock": the data-state of a card and of the product view. */
export function stockState(available) {
  if (available <= 0) return "sold-out";
  return available <= LOW_STOCK ? "low" : "in-stock";
}

const BADGES = { "sold-out": "Sold out", low: "Almost gone", "in-stock": "" };

/** The stock badge's text for a state of stockState(); "" (no badge) when in stock. */
export function stockBadge(state) {
  return BADGES[state];
}

/** Events: "change" (detail: {product, previous}) whenever a product's numbers move. */
export class Catalog extends EventTarget {
  #list;
  #empty;
  #count;
  #cards = new Map(); // sku -> {product, el, available, detail, badge}
  #selected = null;
  #query = "";

  constructor({ list, empty, count, onSelect }) {
    super();
    this.#list = list;
    this.#empty = empty;
    this.#count = count;
    this.onSelect = onSelect;
  }

  get skus() {
    return [...this.#cards.keys()];
  }

  get(sku) {
    return this.#cards.get(sku)?.product ?? null;
  }

  /** Products from a query or a mutation: new cards, or newer numbers for known ones. */
  upsert(...products) {
    for (const product of products) {
      if (!this.#cards.has(product.sku)) this.#add(product);
      else this.show(product);
    }
    this.#updateCount();
  }

  /** New numbers for a known product, if newer than those shown; true when applied. */
  show(update) {
    const card = this.#cards.get(update.sku);
    if (!card || update.version <= card.product.version) return false;
    const previous = card.product;
    card.product = { ...previous, ...update };
    this.#paint(card);
    const { available } = card.product;
    if (available !== previous.available) {
      flash(card.available, available < previous.available ? "flash-down" : "flash-up");
    }
    this.dispatchEvent(new CustomEvent("change", { detail: { product: card.product, previous } }));
    return true;
  }

  select(sku) {
    for (const [key, card] of this.#cards) card.el.classList.toggle("selected", key === sku);
    this.#selected = sku;
  }

  /** Show only cards whose sku or name contains `text` (case-insensitive). */
  filter(text) {
    this.#query = text.trim().toLowerCase();
    for (const card of this.#cards.values()) card.el.hidden = !this.#matches(card.product);
    this.#updateCount();
  }

  #matches(product) {
    const q = this.#query;
    return !q || product.sku.toLowerCase().includes(q) || product.name.toLowerCase().includes(q);
  }

  #add(product) {
    const card = { product };
    card.available = h("span", { class: "available", dataset: { testid: "available" } });
    card.detail = h("p", { class: "card-detail", dataset: { testid: "stock-detail" } });
    card.badge = h("span", { class: "badge", dataset: { testid: "stock-badge" } });
    card.el = h(
      "li",
      { class: "card", dataset: { testid: "product-card", sku: product.sku } },
      h(
        "button",
        {
          type: "button",
          class: "card-select",
          "aria-label": `View ${product.name}`,
          onclick: () => this.onSelect(product.sku),
        },
        h("span", { class: "card-name" }, product.name),
      ),
      h("p", { class: "card-meta" }, h("span", { class: "card-sku" }, product.sku), card.badge),
      h("p", { class: "card-count" }, card.available, h("span", { class: "unit" }, "available")),
      card.detail,
    );
    card.el.classList.toggle("selected", product.sku === this.#selected);
    card.el.hidden = !this.#matches(product);
    this.#paint(card);
    // Keep sku order (the server's order) when products arrive later, one at a time.
    const next = [...this.#cards.keys()].find((sku) => sku > product.sku);
    this.#list.insertBefore(card.el, next ? this.#cards.get(next).el : null);
    this.#cards.set(product.sku, card);
  }

  #paint({ product, el, available, detail, badge }) {
    const state = stockState(product.available);
    el.dataset.state = state;
    el.dataset.available = product.available;
    available.textContent = formatNumber(product.available);
    const { quantity, reserved } = product;
    detail.textContent = `${formatNumber(quantity)} on hand · ${formatNumber(reserved)} held`;
    badge.textContent = stockBadge(state);
    badge.hidden = !badge.textContent;
  }

  #updateCount() {
    const shown = [...this.#cards.values()].filter((c) => !c.el.hidden).length;
    const total = this.#cards.size;
    this.#count.textContent =
      shown === total ? `${total} products` : `${shown} of ${total} products`;
    this.#empty.hidden = shown > 0;
  }
}
