-- wrk script for the benchmarks (bench.harness.drivers.wrk): every request reserves one
-- unit of one product.
--
--   wrk ... -s bench/harness/drivers/reserve.lua \
--       http://127.0.0.1:PORT/graphql -- SKU_PREFIX PRODUCTS [TOKENS]
--
-- Skus are SKU_PREFIX-0 .. SKU_PREFIX-(PRODUCTS-1); each request picks one at random.
-- With TOKENS, thread N reads buyer tokens from the file TOKENS-N (one a line) and sends
-- each request with the next one (Authorization: Bearer), so every request is another
-- buyer's until the file runs out; after that tokens are reused, and counted as such.
-- Always one document with variables, never inlined literals (the server caches parsed
-- documents by their text). done() prints one line, "WRK_RESULT {json}", with the answers
-- that were Reservations, those that were BUSY (503: the request's deadline passed, or
-- the server's queue was full; nothing held), the other answers, and requests sent but
-- never answered (cut off when wrk stopped: the server may still have committed them).
--
-- Each request comes from one of 65,536 shoppers: X-Forwarded-For names a random
-- address, as a load balancer would (the server trusts 127.0.0.1 as a proxy), so the
-- server's per-client limits see a flash sale's crowd, not one client.

local DOCUMENT = "mutation Reserve($lines: [ReserveLineInput!]!) "
  .. "{ reserve(lines: $lines, ttlSeconds: 3600) { __typename } }"

local threads = {}

local function body(sku)
  return '{"query":"' .. DOCUMENT .. '","variables":{"lines":[{"sku":"' .. sku
    .. '","quantity":1}]}}'
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  prefix = args[1]
  products = tonumber(args[2])
  math.randomseed(os.time() * 100 + thread_number)
  reservations, busy, other, sent, received = 0, 0, 0, 0, 0
  sample = ""
  wrk.method = "POST"
  headers = { ["Content-Type"] = "application/json" }
  if products == 1 then
    fixed = body(prefix .. "-0")
  end
  buyers_reused = 0
  if args[3] then
    tokens = {}
    for line in io.lines(args[3] .. "-" .. thread_number) do
      tokens[#tokens + 1] = "Bearer " .. line
    end
  end
end

function request()
  sent = sent + 1
  headers["X-Forwarded-For"] = "10.0." .. math.random(0, 255) .. "." .. math.random(0, 255)
  if tokens then
    if sent > #tokens then
      buyers_reused = buyers_reused + 1
    end
    headers["Authorization"] = tokens[(sent - 1) % #tokens + 1]
  end
  return wrk.format(nil, nil, headers, fixed or body(prefix .. "-" .. math.random(0, products - 1)))
end

function response(status, headers, answer)
  received = received + 1
  if status == 200 and string.find(answer, '"__typename":"Reservation"', 1, true) then
    reservations = reservations + 1
  elseif status == 503 and string.find(answer, '"code":"BUSY"', 1, true) then
    busy = busy + 1
  else
    other = other + 1
    if sample == "" then
      sample = status .. " " .. string.sub(answer, 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local totals = {
    reservations = 0, busy = 0, other = 0, sent = 0, received = 0, buyers_reused = 0
  }
  local samples = {}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
    local s = thread:get("sample")
    if s ~= "" then
      table.insert(samples, s)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"reservations":%d,"busy":%d,"other":%d,"sent":%d,"received":%d,'
      .. '"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"buyers_reused":%d}\n',
    totals.reservations, totals.busy, totals.other, totals.sent, totals.received,
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, totals.buyers_reused
  ))
  for _, s in ipairs(samples) do
    io.write("WRK_SAMPLE " .. string.gsub(s, "\n", " ") .. "\n")
  end
end
