// The checkout panel: every hold this page made, with its countdown to expiry, "Pay"
// (confirm) and "Payment fails" (release).

import { byTestId, describeError, h } from "./dom.js";
import { request } from "./graphql.js";
import { CONFIRM, RELEASE } from "./operations.js";

const KEEP_FINISHED = 5; // finished holds stay visible for a while, then make room

const STATUS_TEXT = {
  PENDING: "Held for you until the timer runs out.",
  CONFIRMED: "Paid. The units are yours.",
  RELEASED: "Payment failed. The units went back on sale.",
  EXPIRED: "The hold expired. The units went back on sale.",
};

export class Checkout {
  #list;
  #empty;
  #holds = []; // {id, status, deadline, duration, el, countdown, bar, message, actions}
  #ticker = 0;

  constructor(root, catalog) {
    this.root = root;
    this.#list = byTestId(root, "holds");
    this.#empty = byTestId(root, "checkout-empty");
    this.catalog = catalog;
  }

  /** A Reservation just made by this page. */
  add(reservation) {
    // Count down from the server's own numbers (expiresAt - createdAt) starting now,
    // rather than comparing expiresAt with this device's clock, which may be off.
    const duration = Date.parse(reservation.expiresAt) - Date.parse(reservation.createdAt);
    const hold = { id: reservation.id, deadline: performance.now() + duration, duration };
    const what = reservation.lines.map((line) => {
      const name = this.catalog.get(line.sku)?.name ?? line.sku;
      return `${line.quantity} × ${name}`;
    });
    hold.countdown = h("span", { class: "countdown", dataset: { testid: "hold-countdown" } });
    hold.bar = h("span", { class: "timer-bar-fill" });
    hold.message = h("p", { class: "hold-status", dataset: { testid: "hold-status" } });
    const button = (testid, label, mutation, className) => {
      const onclick = () => this.#resolve(hold, mutation);
      return h("button", { type: "button", class: className, dataset: { testid }, onclick }, label);
    };
    hold.actions = h(
      "div",
      { class: "hold-actions" },
      button("pay", "Pay", CONFIRM, "primary"),
      button("payment-fails", "Payment fails", RELEASE),
    );
    hold.el = h(
      "li",
      { class: "hold", dataset: { testid: "hold", holdId: reservation.id } },
      h("p", { class: "hold-what" }, what.join(", ")),
      h(
        "p",
        { class: "hold-timer" },
        "Expires in ",
        hold.countdown,
        h("span", { class: "timer-bar", "aria-hidden": "true" }, hold.bar),
      ),
      hold.actions,
      hold.message,
    );
    this.#holds.unshift(hold);
    this.#list.prepend(hold.el);
    this.#empty.hidden = true;
    delete this.root.dataset.empty; // a phone shows this panel only once it has a hold
    this.#setStatus(hold, "PENDING");
    this.#tick();
    this.#ticker ||= setInterval(() => this.#tick(), 250);
  }

  async #resolve(hold, mutation) {
    for (const button of hold.actions.querySelectorAll("button")) button.disabled = true;
    hold.message.textContent = mutation === CONFIRM ? "Paying…" : "Releasing…";
    try {
      const data = await request(mutation, { id: hold.id });
      const result = data.confirm ?? data.release;
      if (result.__typename === "Reservation") {
        this.#setStatus(hold, result.status);
      } else if (result.__typename === "ReservationNotPending") {
        // E.g. "Pay" a moment after the hold expired: the server says what it became.
        this.#setStatus(hold, result.status, result.message);
      } else {
        this.#setStatus(hold, "PENDING", result.message);
      }
    } catch (error) {
      this.#setStatus(hold, "PENDING", describeError(error));
    }
  }

  #setStatus(hold, status, message = STATUS_TEXT[status]) {
    hold.status = status;
    hold.el.dataset.status = status;
    hold.message.textContent = message;
    const pending = status === "PENDING";
    hold.actions.hidden = !pending;
    for (const button of hold.actions.querySelectorAll("button")) button.disabled = !pending;
    if (!pending) {
      hold.countdown.textContent = "—";
      hold.bar.style.width = "0%";
      this.#trim();
    }
  }

  #tick() {
    const now = performance.now();
    let pending = 0;
    for (const hold of this.#holds) {
      if (hold.status !== "PENDING") continue;
      const left = Math.max(0, hold.deadline - now);
      hold.countdown.textContent = formatDuration(left);
      hold.bar.style.width = `${(100 * left) / hold.duration}%`;
      // The server's sweeper expires the hold itself; this only stops offering buttons
      // that could no longer succeed.
      if (left === 0) this.#setStatus(hold, "EXPIRED");
      else pending += 1;
    }
    if (pending === 0) {
      clearInterval(this.#ticker);
      this.#ticker = 0;
    }
  }

  #trim() {
    const finished = this.#holds.filter((hold) => hold.status !== "PENDING");
    for (const hold of finished.slice(KEEP_FINISHED)) {
      hold.el.remove();
      this.#holds.splice(this.#holds.indexOf(hold), 1);
    }
  }
}

function formatDuration(ms) {
  const seconds = Math.ceil(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}
