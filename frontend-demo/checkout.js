// The checkout panel: every hold this page made, followed live through the `reservation`
// subscription. Each shows a countdown to expiry, "+5 min" (extendReservation), a stepper
// per line that gives units back (release with lines), "Pay" (confirm: whatever is still
// held) and "Payment fails" (release). Holds are the buyer's: switching buyers shows the
// other buyer's holds (followed again) and stops following this one's.

import { byTestId, describeError, h } from "./dom.js";
import { request } from "./graphql.js";
import { CONFIRM, EXTEND, HOLD, RELEASE } from "./operations.js";

const KEEP_FINISHED = 5; // finished holds stay visible for a while, then make room
const EXTEND_SECONDS = 300;
const RETRY_MS = 3000; // a refused hold subscription is asked for again after this

const STATUS_TEXT = {
  PENDING: "Held for you until the timer runs out.",
  CONFIRMED: "Paid. The units are yours.",
  RELEASED: "Released. The units went back on sale.",
  EXPIRED: "The hold expired. The units went back on sale.",
};

export class Checkout {
  #list;
  #empty;
  #socket;
  #holds = [];
  #ticker = 0;
  #buyer = null;

  constructor(root, { catalog, socket }) {
    this.root = root;
    this.#list = byTestId(root, "holds");
    this.#empty = byTestId(root, "checkout-empty");
    this.catalog = catalog;
    this.#socket = socket;
  }

  /** The holds shown are this buyer's (null: anonymous); the others' are put away. */
  switchBuyer(buyer) {
    this.#buyer = buyer;
    for (const hold of this.#holds) {
      const mine = hold.buyer === buyer;
      hold.el.hidden = !mine;
      if (!mine) {
        // Another buyer's hold is unknown to this one: stop asking about it.
        hold.subscription?.unsubscribe();
        hold.subscription = null;
        hold.offline = false;
      } else if (hold.status === "PENDING" && hold.subscription === null) {
        this.#follow(hold); // its current state first: it may have ended meanwhile
      }
    }
    this.#showEmpty();
    if (this.#holds.some((hold) => hold.buyer === buyer && hold.status === "PENDING")) {
      this.#ticker ||= setInterval(() => this.#tick(), 250);
    }
  }

  /** A Reservation made by this page, or offered to its buyer by a waiting list. */
  add(reservation) {
    if (this.#holds.some((hold) => hold.id === reservation.id)) return; // already here
    const hold = {
      id: reservation.id,
      buyer: this.#buyer,
      status: "PENDING",
      createdAt: Date.parse(reservation.createdAt),
      expiresAt: Date.parse(reservation.expiresAt),
      // The countdown runs on the server's numbers (expiresAt - createdAt) from the moment
      // the hold arrived, never on this device's clock, which may be off.
      anchor: performance.now(),
      lines: new Map(),
      busy: false,
      subscription: null,
      offline: false, // its subscription was refused; retried from #tick
      retryAt: 0,
    };
    hold.countdown = h("span", { class: "countdown", dataset: { testid: "hold-countdown" } });
    hold.bar = h("span", { class: "timer-bar-fill" });
    hold.message = h("p", { class: "hold-status", dataset: { testid: "hold-status" } });
    hold.reason = h("p", { class: "hold-reason", dataset: { testid: "extend-reason" } });
    hold.extend = h(
      "button",
      {
        type: "button",
        class: "hold-extend",
        dataset: { testid: "extend" },
        onclick: () => this.#extend(hold),
      },
      "+5 min",
    );
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
    const lines = h("ul", { class: "hold-lines" });
    for (const line of reservation.lines) {
      const entry = this.#line(hold, line);
      hold.lines.set(line.sku, entry);
      lines.append(entry.el);
    }
    hold.el = h(
      "li",
      {
        class: "hold",
        dataset: { testid: "hold", holdId: reservation.id, buyer: this.#buyer ?? "" },
      },
      lines,
      h(
        "p",
        { class: "hold-timer" },
        "Expires in ",
        hold.countdown,
        h("span", { class: "timer-bar", "aria-hidden": "true" }, hold.bar),
        hold.extend,
      ),
      hold.reason,
      hold.actions,
      hold.message,
    );
    this.#holds.unshift(hold);
    this.#list.prepend(hold.el);
    this.#showEmpty();
    this.#setStatus(hold, "PENDING");
    this.#render(hold);
    this.#follow(hold);
    this.#ticker ||= setInterval(() => this.#tick(), 250);
  }

  #follow(hold) {
    hold.subscription = this.#socket.subscribe(
      HOLD,
      { id: hold.id },
      {
        next: ({ reservation }) => {
          // A final state is the stream's last: the server completes it by itself.
          if (reservation.status !== "PENDING") hold.subscription = null;
          if (hold.offline && hold.status === "PENDING") {
            hold.message.textContent = STATUS_TEXT.PENDING;
          }
          hold.offline = false;
          this.#apply(hold, reservation);
        },
        error: (errors) => {
          // E.g. the connection's subscription limit, with many holds open: ask again in
          // a while (each hold that ends frees a subscription).
          hold.subscription = null;
          hold.offline = true;
          hold.retryAt = performance.now() + RETRY_MS;
          const text = Array.isArray(errors) ? errors.map((e) => e.message).join("; ") : errors;
          if (hold.status === "PENDING") hold.message.textContent = `No live status: ${text}`;
        },
      },
    );
  }

  #line(hold, line) {
    const entry = {
      sku: line.sku,
      quantity: line.quantity,
      confirmed: 0,
      released: 0,
      held: h("span", { class: "line-held", dataset: { testid: "line-held" } }),
      note: h("span", { class: "line-note muted", dataset: { testid: "line-note" } }),
    };
    const name = this.catalog.get(line.sku)?.name ?? line.sku;
    entry.less = h(
      "button",
      {
        type: "button",
        class: "line-less",
        dataset: { testid: "release-one" },
        "aria-label": `Give back one ${name}`,
        title: "Give back one unit",
        onclick: () => this.#releaseOne(hold, entry),
      },
      "−",
    );
    entry.el = h(
      "li",
      { class: "hold-line", dataset: { testid: "hold-line", sku: line.sku } },
      h("span", { class: "stepper" }, entry.less, entry.held),
      h("span", { class: "hold-what" }, `× ${name}`),
      entry.note,
    );
    return entry;
  }

  /** Merge a state of the hold, from the subscription or a mutation's answer. They may
   * arrive out of order (a mutation's answer after the push of a later change), so each
   * number only moves the way the server moves it: expiry later, units out, never back. */
  #apply(hold, state) {
    if (!state) return;
    if (state.expiresAt) hold.expiresAt = Math.max(hold.expiresAt, Date.parse(state.expiresAt));
    for (const line of state.lines ?? []) {
      const entry = hold.lines.get(line.sku);
      if (!entry) continue;
      entry.confirmed = Math.max(entry.confirmed, line.confirmedQuantity);
      entry.released = Math.max(entry.released, line.releasedQuantity);
    }
    if (state.status && state.status !== "PENDING" && hold.status === "PENDING") {
      this.#setStatus(hold, state.status);
    }
    this.#render(hold);
  }

  async #extend(hold) {
    const data = await this.#send(hold, "Extending…", EXTEND, {
      id: hold.id,
      ttl: EXTEND_SECONDS,
    });
    const result = data?.extendReservation;
    if (result?.__typename === "HoldLimitReached") {
      // The server's cap on how long one hold may live: asking again cannot help.
      hold.extend.disabled = true;
      hold.extend.dataset.capped = "";
      hold.extend.title = result.message;
      hold.reason.textContent = result.message;
    } else if (result?.__typename === "Reservation") {
      hold.message.textContent = "Held 5 more minutes.";
    }
  }

  async #releaseOne(hold, entry) {
    const lines = [{ sku: entry.sku, quantity: 1 }];
    const data = await this.#send(hold, "Giving back one…", RELEASE, { id: hold.id, lines });
    if (data?.release.__typename === "Reservation" && hold.status === "PENDING") {
      hold.message.textContent = STATUS_TEXT.PENDING;
    }
  }

  async #resolve(hold, mutation) {
    await this.#send(hold, mutation === CONFIRM ? "Paying…" : "Releasing…", mutation, {
      id: hold.id,
    });
  }

  /** Run one mutation on the hold (one at a time per hold) and show its outcome. */
  async #send(hold, doing, mutation, variables) {
    hold.busy = true;
    this.#render(hold);
    hold.message.textContent = doing;
    let data = null;
    try {
      data = await request(mutation, variables);
      const result = data.extendReservation ?? data.confirm ?? data.release;
      if (result.__typename === "Reservation") {
        this.#apply(hold, result);
      } else if (result.__typename === "ReservationNotPending") {
        // E.g. "Pay" a moment after the hold expired: the server says what it became.
        this.#setStatus(hold, result.status, result.message);
      } else {
        hold.message.textContent = result.message;
      }
    } catch (error) {
      hold.message.textContent = describeError(error);
    }
    hold.busy = false;
    this.#render(hold);
    return data;
  }

  #setStatus(hold, status, message = STATUS_TEXT[status]) {
    hold.status = status;
    hold.el.dataset.status = status;
    hold.message.textContent = message;
    if (status !== "PENDING") {
      hold.countdown.textContent = "—";
      hold.bar.style.width = "0%";
      hold.subscription?.unsubscribe(); // the server ends it too, after the final state
      this.#trim();
    }
    this.#render(hold);
  }

  /** Buttons and per-line numbers from the hold's state. */
  #render(hold) {
    const pending = hold.status === "PENDING";
    hold.actions.hidden = !pending;
    hold.extend.hidden = !pending;
    for (const button of hold.actions.querySelectorAll("button")) {
      button.disabled = !pending || hold.busy;
    }
    if (!("capped" in hold.extend.dataset)) hold.extend.disabled = !pending || hold.busy;
    for (const entry of hold.lines.values()) {
      const held = pending ? entry.quantity - entry.released : entry.confirmed;
      entry.held.textContent = String(held);
      entry.less.hidden = !pending;
      // Giving back a hold's last unit releases the hold, as "Payment fails" does.
      entry.less.disabled = !pending || hold.busy || held === 0;
      const notes = [];
      if (entry.released > 0) notes.push(`${entry.released} given back`);
      if (!pending && entry.confirmed > 0) notes.push("bought");
      entry.note.textContent = notes.join(", ");
      entry.el.dataset.held = String(held);
    }
    if (pending) this.#show(hold, performance.now());
  }

  #show(hold, now) {
    const duration = hold.expiresAt - hold.createdAt;
    const left = Math.max(0, hold.anchor + duration - now);
    hold.countdown.textContent = formatDuration(left);
    hold.bar.style.width = `${(100 * left) / duration}%`;
    // Only the server ends a hold (its expiry arrives through the subscription): at zero
    // on this page's clock the hold may still be there, and the buttons stay.
    if (left === 0 && !hold.busy)
      hold.message.textContent = "Time is up: the hold ends any moment.";
  }

  #tick() {
    const now = performance.now();
    let pending = 0;
    for (const hold of this.#holds) {
      if (hold.status !== "PENDING" || hold.buyer !== this.#buyer) continue;
      if (hold.offline && hold.subscription === null && now >= hold.retryAt) this.#follow(hold);
      this.#show(hold, now);
      pending += 1;
    }
    if (pending === 0) {
      clearInterval(this.#ticker);
      this.#ticker = 0;
    }
  }

  #showEmpty() {
    const shown = this.#holds.some((hold) => hold.buyer === this.#buyer);
    this.#empty.hidden = shown;
    // A phone shows this panel only once it has a hold.
    if (shown) delete this.root.dataset.empty;
    else this.root.dataset.empty = "";
  }

  #trim() {
    const finished = this.#holds.filter(
      (hold) => hold.status !== "PENDING" && hold.buyer === this.#buyer,
    );
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
