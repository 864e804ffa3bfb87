// The admin panel: create a product, restock or write off. The admin token (the one `serve`
// prints, or INVENTORY_ADMIN_TOKEN) is sent as `Authorization: Bearer …` with these two
// mutations only, and the server refuses them without it; shopper requests never carry it.

import { byTestId, describeError } from "./dom.js";
import { request } from "./graphql.js";
import { formatNumber, parseInteger } from "./numbers.js";
import { ADJUST_STOCK, CREATE_PRODUCT } from "./operations.js";

export class AdminPanel {
  #el = {};

  /** onProduct(product, {created}) receives every product a mutation returns. */
  constructor(root, { onProduct }) {
    this.onProduct = onProduct;
    for (const id of [
      "admin-token",
      "create-form",
      "create-sku",
      "create-name",
      "create-quantity",
      "restock-form",
      "restock-sku",
      "restock-delta",
      "restock-reason",
      "admin-message",
    ]) {
      this.#el[id] = byTestId(root, id);
    }
    this.#el["create-form"].addEventListener("submit", (event) => {
      event.preventDefault();
      this.#send(event.submitter, CREATE_PRODUCT, "createProduct", {
        sku: this.#el["create-sku"].value.trim(),
        name: this.#el["create-name"].value.trim(),
        // Not a number: 0, so that the server explains the problem.
        quantity: parseInteger(this.#el["create-quantity"].value, 0),
      });
    });
    this.#el["restock-form"].addEventListener("submit", (event) => {
      event.preventDefault();
      this.#send(event.submitter, ADJUST_STOCK, "adjustStock", {
        sku: this.#el["restock-sku"].value.trim(),
        delta: parseInteger(this.#el["restock-delta"].value, 0),
        reason: this.#el["restock-reason"].value.trim() || "restock",
      });
    });
  }

  /** Aim the restock form at a product (the one selected in the catalog). */
  target(sku) {
    this.#el["restock-sku"].value = sku;
  }

  #headers() {
    const token = this.#el["admin-token"].value.trim();
    return token ? { authorization: `Bearer ${token}` } : {};
  }

  async #send(button, mutation, field, variables) {
    if (button) button.disabled = true;
    this.#say("Saving…", "pending");
    try {
      const result = (await request(mutation, variables, { headers: this.#headers() }))[field];
      if (result.__typename === "Product") {
        this.onProduct(result, { created: field === "createProduct" });
        this.#say(
          field === "createProduct"
            ? `Created ${result.sku} with ${formatNumber(result.quantity)} in stock.`
            : `${result.sku}: ${formatNumber(result.quantity)} on hand, ` +
                `${formatNumber(result.available)} available.`,
          "Product",
        );
      } else {
        this.#say(result.message, result.__typename); // ProductNotFound, ProductExists, …
      }
    } catch (error) {
      this.#say(describeError(error), "error");
    } finally {
      if (button) button.disabled = false;
    }
  }

  #say(text, outcome) {
    this.#el["admin-message"].textContent = text;
    this.#el["admin-message"].dataset.outcome = outcome;
  }
}
