// Small DOM helpers. Text always goes in through textContent, never innerHTML, so a
// product name like "<img onerror=…>" stays a name.

/** h("p", {class: "x", dataset: {testid: "y"}}, "text", child) */
export function h(tag, attributes = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.filter((c) => c !== undefined && c !== null && c !== false));
  return el;
}

/** The element with this data-testid inside `root`. */
export function byTestId(root, id) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/** Replay a CSS animation class, even when the previous one has not finished. */
export function flash(el, className) {
  el.classList.remove("flash-up", "flash-down");
  void el.offsetWidth; // restart: the browser must see the class removed first
  el.classList.add(className);
}

/** A readable line for a failed request (typed outcomes carry their own `message`). */
export function describeError(error) {
  // fetch() rejects with a TypeError only when there is no response at all.
  if (error instanceof TypeError) return "Cannot reach the server. Try again in a moment.";
  if (error?.errors?.[0]?.extensions?.code === "UNAUTHENTICATED") {
    // The buyer token was refused (expired, or signed with another secret).
    return `${error.message} Switch buyer or reload the page for a new one.`;
  }
  if (error?.status === 401) {
    return `${error.message} Open this page with ?token=<storefront token>.`;
  }
  return error?.message || String(error);
}
