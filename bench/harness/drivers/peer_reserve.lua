-- wrk script for bench.peer_postgraphile: reserve.lua's load (one unit of a random
-- product per request, one document with variables, a crowd of X-Forwarded-For
-- addresses) sent to the PostGraphile peer, whose mutation is the function
-- peer.reserve (bench/harness/peer/reserve.sql).
--
--   wrk ... -s bench/harness/drivers/peer_reserve.lua \
--       http://127.0.0.1:PORT/graphql -- SKU_PREFIX PRODUCTS
--
-- An answer counts as a reservation when it carries one ("result": a Reservation);
-- a refusal ("result": null) or an error is another answer. done() prints the same
-- "WRK_RESULT {json}" line as reserve.lua (buyers_reused is always 0: no buyer tokens).

local DOCUMENT = "mutation Reserve($sku: String!) "
  .. "{ reserve(input: {sku: $sku, quantity: 1, ttlSeconds: 3600}) { result { __typename } } }"

local threads = {}

local function body(sku)
  return '{"query":"' .. DOCUMENT .. '","variables":{"sku":"' .. sku .. '"}}'
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  prefix = args[1]
  products = tonumber(args[2])
  math.randomseed(os.time() * 100 + thread_number)
  reservations, other, sent, received = 0, 0, 0, 0
  sample = ""
  wrk.method = "POST"
  headers = { ["Content-Type"] = "application/json" }
  if products == 1 then
    fixed = body(prefix .. "-0")
  end
end

function request()
  sent = sent + 1
  headers["X-Forwarded-For"] = "10.0." .. math.random(0, 255) .. "." .. math.random(0, 255)
  return wrk.format(nil, nil, headers, fixed or body(prefix .. "-" .. math.random(0, products - 1)))
end

function response(status, headers, answer)
  received = received + 1
  if status == 200 and string.find(answer, '"__typename":"Reservation"', 1, true) then
    reservations = reservations + 1
  else
    other = other + 1
    if sample == "" then
      sample = status .. " " .. string.sub(answer, 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local totals = { reservations = 0, other = 0, sent = 0, received = 0 }
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
    'WRK_RESULT {"reservations":%d,"other":%d,"sent":%d,"received":%d,'
      .. '"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"buyers_reused":0}\n',
    totals.reservations, totals.other, totals.sent, totals.received,
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout
  ))
  for _, s in ipairs(samples) do
    io.write("WRK_SAMPLE " .. string.gsub(s, "\n", " ") .. "\n")
  end
end
