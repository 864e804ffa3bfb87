// The waiting list on the product view. When a product is sold out (nothing available, or
// a queue already waiting for it: then the server refuses reserves so nobody jumps it) the
// buyer can join with the quantity picked. The place is followed live through the
// `waitlistEntry(id)` subscription ("You are #3 in line"); when units come free the server
// offers the head of the queue a real hold, in the same transaction, and that hold lands
// in the checkout with its countdown. Places are the buyer's, like holds. A place still
// waiting is remembered for the tab (session storage), so a reload keeps following it.

import { byTestId, describeError } from "./dom.js";
import { request } from "./graphql.js";
import { JOIN_WAITLIST, LEAVE_WAITLIST, WAITLIST_PLACE } from "./operations.js";

const RETRY_MS = 3000; // a refused subscription is asked for again after this
const STORED = "waitlistPlaces"; // session storage: {key(buyer, sku): entry id} waiting

export class Waitlist {
  #el = {};
  #socket;
  #checkout;
  #places = new Map(); // buyer + sku -> place (the buyer's latest entry for the sku)
  #buyer = null;
  #product = null; // the product shown

  /** `quantity()` is the quantity the shopper picked. */
  constructor(root, { socket, checkout, quantity }) {
    this.root = root;
    this.#socket = socket;
    this.#checkout = checkout;
    this.quantity = quantity;
    for (const id of ["waitlist-join", "waitlist-leave", "waitlist-position", "waitlist-message"]) {
      this.#el[id] = byTestId(root, id);
    }
    this.#el["waitlist-join"].addEventListener("click", () => this.#join());
    this.#el["waitlist-leave"].addEventListener("click", () => this.#leave());
  }

  /** The product on the page, whenever it or its numbers change. */
  show(product) {
    this.#product = product;
    this.#render();
  }

  /** Places shown and followed are this buyer's; the others' are put away. */
  switchBuyer(buyer) {
    this.#buyer = buyer;
    for (const [stored, id] of Object.entries(remembered())) {
      const [owner, sku] = stored.split("\u0000");
      if (owner !== (buyer ?? "") || this.#places.has(stored)) continue;
      // Its first message says where it is now (or that it was offered meanwhile).
      this.#places.set(stored, { buyer, sku, id, subscription: null, retry: 0, status: "WAITING" });
    }
    for (const place of this.#places.values()) {
      if (place.buyer !== buyer) this.#unfollow(place);
      else if (place.status === "WAITING" && place.subscription === null) this.#follow(place);
    }
    this.#say("");
    this.#render();
  }

  get #place() {
    return this.#product ? this.#places.get(key(this.#buyer, this.#product.sku)) : undefined;
  }

  async #join() {
    const { sku } = this.#product;
    const button = this.#el["waitlist-join"];
    button.disabled = true;
    this.#say("Joining…");
    try {
      const { joinWaitlist: result } = await request(JOIN_WAITLIST, {
        sku,
        quantity: this.quantity(),
      });
      if (result.__typename === "WaitlistEntry") {
        const place = { buyer: this.#buyer, sku, subscription: null, retry: 0, id: result.id };
        this.#places.set(key(place.buyer, sku), place);
        this.#apply(place, result);
        if (place.status === "WAITING") this.#follow(place);
      } else {
        this.#say(describeJoin(result), result.__typename);
      }
    } catch (error) {
      this.#say(describeError(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  async #leave() {
    const place = this.#place;
    if (!place) return;
    const button = this.#el["waitlist-leave"];
    button.disabled = true;
    try {
      const { leaveWaitlist: result } = await request(LEAVE_WAITLIST, { id: place.id });
      if (result.__typename === "WaitlistEntry") this.#apply(place, result);
      else this.#say(result.message, result.__typename);
    } catch (error) {
      this.#say(describeError(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  #follow(place) {
    place.subscription = this.#socket.subscribe(
      WAITLIST_PLACE,
      { id: place.id },
      {
        next: ({ waitlistEntry }) => this.#apply(place, waitlistEntry),
        error: (errors) => {
          place.subscription = null;
          if (Array.isArray(errors) && errors[0]?.extensions?.code === "BAD_USER_INPUT") {
            // Unknown to this buyer (a remembered place of a database since wiped, say):
            // asking again cannot help.
            const placeKey = key(place.buyer, place.sku);
            remember(placeKey, null);
            if (this.#places.get(placeKey) === place) this.#places.delete(placeKey);
            this.#render();
            return;
          }
          // E.g. the connection's subscription limit: ask again in a while.
          const text = Array.isArray(errors) ? errors.map((e) => e.message).join("; ") : errors;
          if (place.buyer === this.#buyer && place.sku === this.#product?.sku) {
            this.#say(`No live place in line: ${text}`, "error");
          }
          clearTimeout(place.retry);
          place.retry = setTimeout(() => {
            if (place.buyer === this.#buyer && place.status === "WAITING") this.#follow(place);
          }, RETRY_MS);
        },
      },
    );
  }

  #unfollow(place) {
    clearTimeout(place.retry);
    place.subscription?.unsubscribe();
    place.subscription = null;
  }

  /** A state of the entry, from a mutation's answer or the subscription. Once it is no
   * longer WAITING it stays as it is (an entry moves on only once). */
  #apply(place, entry) {
    if (!entry || (place.status && place.status !== "WAITING")) return;
    place.status = entry.status;
    place.position = entry.position;
    place.quantity = entry.quantity;
    remember(key(place.buyer, place.sku), entry.status === "WAITING" ? place.id : null);
    if (entry.status !== "WAITING") this.#unfollow(place); // the server completes it too
    if (entry.status === "OFFERED" && entry.reservation && place.buyer === this.#buyer) {
      this.#checkout.add(entry.reservation);
    }
    if (place.buyer === this.#buyer && place.sku === this.#product?.sku) {
      this.#say(
        {
          WAITING: "",
          OFFERED: "Your turn: the units are held for you in the checkout.",
          LEFT: "You left the waiting list.",
        }[entry.status],
        entry.status,
      );
    }
    this.#render();
  }

  #render() {
    const product = this.#product;
    const place = this.#place;
    const waiting = place?.status === "WAITING";
    // Sold out, or a queue that public reserves may not jump: the way in is the list.
    const soldOut = product !== null && (product.available <= 0 || product.waiting > 0);
    this.root.hidden = product === null || !(soldOut || place);
    this.root.dataset.status = place?.status ?? "";
    this.#el["waitlist-join"].hidden = waiting || !soldOut;
    this.#el["waitlist-leave"].hidden = !waiting;
    const position = this.#el["waitlist-position"];
    position.hidden = !waiting;
    position.textContent = waiting ? `You are #${place.position} in line` : "";
    position.dataset.position = waiting ? String(place.position) : "";
  }

  #say(text, outcome = "") {
    const message = this.#el["waitlist-message"];
    message.textContent = text;
    message.dataset.outcome = outcome;
  }
}

function key(buyer, sku) {
  return `${buyer ?? ""}\u0000${sku}`;
}

function remembered() {
  try {
    return JSON.parse(sessionStorage.getItem(STORED)) ?? {};
  } catch {
    return {};
  }
}

function remember(placeKey, id) {
  const places = remembered();
  if (id === null) delete places[placeKey];
  else places[placeKey] = id;
  sessionStorage.setItem(STORED, JSON.stringify(places));
}

/** What the shopper reads when joining did not work. */
function describeJoin(result) {
  switch (result.__typename) {
    case "BuyerRequired":
      return "Only a buyer can wait in line: pick a buyer at the top.";
    case "PurchaseLimitExceeded":
      return `Limit ${result.limit} per buyer: you already have ${result.alreadyHeld}.`;
    default:
      return result.message; // ProductNotFound, InvalidInput
  }
}
