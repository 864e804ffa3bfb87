// Numbers in and out of the page: integers read from form fields and URL parameters, and
// counts written with the reader's digit grouping.

/** The integer `value` starts with, as parseInt reads it ("12abc" is 12, "1.9" is 1), or
 * `fallback` when it starts with none (empty, absent, not a number); then kept within
 * `min` and `max` when they are given. */
export function parseInteger(value, fallback, { min = -Infinity, max = Infinity } = {}) {
  const n = Number.parseInt(value, 10);
  return Number.isNaN(n) ? fallback : Math.min(max, Math.max(min, n));
}

export const formatNumber = new Intl.NumberFormat().format;
