// Live availability for every product on the page, over one LiveSocket. The server takes
// at most 100 skus per subscription and 16 subscriptions per connection (its default for
// INVENTORY_MAX_SUBSCRIPTIONS_PER_CONNECTION), so skus are followed in chunks of up to 100.

import { AVAILABILITY } from "./operations.js";

const MAX_SKUS = 100;
const MAX_SUBSCRIPTIONS = 16;

export class AvailabilityFeed {
  #socket;
  #chunks = []; // {skus, handle}
  #followed = new Set();

  /** onUpdate(availabilityUpdate) per message; onError(message) when a chunk fails. */
  constructor(socket, { onUpdate, onError }) {
    this.#socket = socket;
    this.onUpdate = onUpdate;
    this.onError = onError;
  }

  /** Follow these skus too (already followed ones are left alone). */
  follow(skus) {
    const missing = skus.filter((sku) => !this.#followed.has(sku));
    if (missing.length === 0) return;
    let plan = missing;
    if (this.#chunks.length + Math.ceil(missing.length / MAX_SKUS) > MAX_SUBSCRIPTIONS) {
      // Products added one by one made many small chunks: start over with full ones. The
      // new snapshots repeat versions the page already shows, which it ignores.
      plan = [...this.#followed, ...missing];
      for (const chunk of this.#chunks) chunk.handle.unsubscribe();
      this.#chunks = [];
      this.#followed.clear();
    }
    const limit = MAX_SKUS * MAX_SUBSCRIPTIONS;
    if (plan.length > limit) {
      this.onError(`Live updates cover the first ${limit} products only.`);
      plan = plan.slice(0, limit);
    }
    for (let i = 0; i < plan.length; i += MAX_SKUS) this.#subscribe(plan.slice(i, i + MAX_SKUS));
  }

  #subscribe(skus) {
    const chunk = { skus };
    chunk.handle = this.#socket.subscribe(
      AVAILABILITY,
      { skus },
      {
        next: (data) => this.onUpdate(data.availability),
        error: (errors) => {
          // Forget the chunk so that the next follow() (after the next catalog load)
          // subscribes its skus again.
          this.#chunks = this.#chunks.filter((c) => c !== chunk);
          for (const sku of skus) this.#followed.delete(sku);
          const text = Array.isArray(errors) ? errors.map((e) => e.message).join("; ") : errors;
          this.onError(`Live updates stopped for ${skus.length} products: ${text}`);
        },
      },
    );
    this.#chunks.push(chunk);
    for (const sku of skus) this.#followed.add(sku);
  }
}
