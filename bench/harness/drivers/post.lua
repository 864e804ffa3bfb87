-- wrk script for bench.cpu_per_request: every request POSTs the same JSON body, taken from
-- the environment (BENCH_BODY), to the URL given. done() prints one line, "WRK_POST
-- {json}": the answers, and those that were not 200. Each request comes from one of 65,536
-- shoppers (X-Forwarded-For, as reserve.lua sends), so per-client limits see a crowd.
--
--   BENCH_BODY='{"query":"{ __typename }"}' wrk ... -s bench/harness/drivers/post.lua URL

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  answered, refused = 0, 0
  math.randomseed(os.time())
end

function request()
  wrk.headers["X-Forwarded-For"] = "10.0." .. math.random(0, 255) .. "." .. math.random(0, 255)
  return wrk.format()
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local answered_total, refused_total = 0, 0
  for _, thread in ipairs(threads) do
    answered_total = answered_total + thread:get("answered")
    refused_total = refused_total + thread:get("refused")
  end
  io.write(string.format('WRK_POST {"answered":%d,"refused":%d,"duration_us":%d}\n',
    answered_total, refused_total, summary.duration))
end
