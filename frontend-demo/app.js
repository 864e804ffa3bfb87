// Wires the storefront together. URL parameters:
//   ?sku=A,B   show only these products (and open the first one)
//   ?ttl=N     seconds a shopper's hold lasts (the "hold for" field; default 120)
//   ?first=N   how many products the catalog loads, 1 to 600 (default 100; more would
//              price the listing over the server's default query cost limit)
//   ?token=T   the storefront token, for a server with INVENTORY_STOREFRONT_TOKEN set
//   ?buyer=N   shop as buyer N (demo mode: `serve --demo` gives its tokens)
//   ?buyerToken=T  shop with this buyer token (`inventory-graphql buyer-token N`)

import { AdminPanel } from "./admin.js";
import { BuyerSwitcher, MAX_BUYER } from "./buyer.js";
import { Catalog } from "./catalog.js";
import { Checkout } from "./checkout.js";
import { byTestId, describeError } from "./dom.js";
import { FlashSale } from "./flash-sale.js";
import { LiveSocket, request, setBuyerToken, setStorefrontToken } from "./graphql.js";
import { AvailabilityFeed } from "./live.js";
import { parseInteger } from "./numbers.js";
import { PRODUCTS } from "./operations.js";
import { ProductView } from "./product-view.js";

const params = new URLSearchParams(location.search);
// The token moves from the address bar (where it would be shared, bookmarked, logged) to
// this tab's session storage, which also keeps it across a reload.
if (params.has("token")) {
  sessionStorage.setItem("storefrontToken", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", `${location.pathname}?${params}${location.hash}`);
}
setStorefrontToken(sessionStorage.getItem("storefrontToken"));
// Tokens stay out of the address bar, as above; the buyer's number may stay.
const buyerToken = params.get("buyerToken");
if (params.has("buyerToken")) {
  params.delete("buyerToken");
  history.replaceState(null, "", `${location.pathname}?${params}${location.hash}`);
}
const requestedBuyer = params.has("buyer")
  ? String(parseInteger(params.get("buyer"), 1, { min: 1, max: MAX_BUYER }))
  : null;
const skuFilter =
  params
    .get("sku")
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean) || null;
const first = parseInteger(params.get("first"), 100, { min: 1, max: 600 });
const ttlSeconds = parseInteger(params.get("ttl"), 120, { min: 1, max: 3600 });

const STATUS_TEXT = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };

const page = document.body;
const notice = byTestId(page, "notice");

const catalog = new Catalog({
  list: byTestId(page, "catalog"),
  empty: byTestId(page, "catalog-empty"),
  count: byTestId(page, "catalog-count"),
  onSelect(sku) {
    select(sku);
    // On a phone the product view sits above a long catalog: bring it into sight.
    if (matchMedia("(max-width: 959px)").matches) {
      byTestId(page, "product-view").scrollIntoView({ behavior: "smooth", block: "start" });
    }
  },
});
const socket = new LiveSocket();
const checkout = new Checkout(byTestId(page, "checkout"), { catalog, socket });
const productView = new ProductView(byTestId(page, "product-view"), {
  catalog,
  checkout,
  socket,
  ttlSeconds,
});
const buyers = new BuyerSwitcher(byTestId(page, "buyer-switcher"), {
  note: byTestId(page, "buyer-note"),
});
const flashSale = new FlashSale(byTestId(page, "flash-sale"), { catalog });
const admin = new AdminPanel(byTestId(page, "admin"), {
  onProduct(product, { created }) {
    // A product made here joins the page (and, with ?sku=, the filter, so that a
    // re-fetch after a reconnect keeps it) and is followed live from now on.
    if (created && skuFilter && !skuFilter.includes(product.sku)) skuFilter.push(product.sku);
    addProducts([product]);
    if (created) select(product.sku);
  },
});

const feed = new AvailabilityFeed(socket, {
  onUpdate: (update) => catalog.show(update),
  onError: (message) => say(message),
});

function select(sku) {
  catalog.select(sku);
  productView.show(sku);
  flashSale.target(sku);
  admin.target(sku);
}

function addProducts(products) {
  catalog.upsert(...products);
  updateSkuList();
  feed.follow(catalog.skus);
}

// Loaded after every connection_ack, the first and each reconnect: products created
// while the page was away appear, and numbers catch up (the subscriptions' snapshots
// do that too; versions decide which is newer).
let retry = 0;
async function loadCatalog() {
  clearTimeout(retry);
  try {
    const variables = skuFilter ? { skus: skuFilter, first: 1000 } : { first };
    const { products } = await request(PRODUCTS, variables);
    addProducts(products);
    say("");
    if (productView.sku === null && skuFilter && products.length > 0) {
      select(skuFilter.find((sku) => catalog.get(sku)) ?? products[0].sku);
    }
  } catch (error) {
    say(`Could not load the catalog: ${describeError(error)}`);
    retry = setTimeout(loadCatalog, 2000);
  }
}

socket.addEventListener("connected", loadCatalog);
socket.addEventListener("rejected", async () => {
  // A demo token signed before the server restarted with a new secret: get a new one.
  if (await buyers.renew()) return;
  say("This storefront needs a token: open it with ?token=<storefront token>.");
});
socket.addEventListener("status", ({ detail: { state } }) => {
  const status = byTestId(page, "connection-status");
  status.dataset.state = state;
  status.textContent = STATUS_TEXT[state];
  // Numbers may be stale while the socket is down: say so rather than look live.
  page.classList.toggle("offline", state === "reconnecting");
});

byTestId(page, "catalog-search").addEventListener("input", (event) => {
  catalog.filter(event.target.value);
});
if (skuFilter) {
  const filtered = byTestId(page, "catalog-filter");
  filtered.hidden = false;
  const all = new URLSearchParams(params);
  all.delete("sku");
  byTestId(page, "show-all").href = `?${all}`;
}

// Another buyer: its token on every request from now on, its holds and waiting-list
// places on the page, and a new WebSocket, since the connection's buyer is the one named
// in its connection_init.
let started = false;
buyers.addEventListener("change", ({ detail: { buyer, token } }) => {
  setBuyerToken(token);
  // First, so that the holds and places followed from now on go out on the new socket.
  if (started) socket.restart();
  checkout.switchBuyer(buyer);
  productView.switchBuyer(buyer);
});
// The first connection already carries the buyer's token.
buyers.start({ requested: requestedBuyer, token: buyerToken }).finally(() => {
  started = true;
  socket.start();
});

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function updateSkuList() {
  const list = document.getElementById("sku-list");
  if (list.options.length === catalog.skus.length) return;
  list.replaceChildren(...catalog.skus.map((sku) => new Option(catalog.get(sku).name, sku)));
}
