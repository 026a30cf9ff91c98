-- wrk script for bench/adjustments.py: POST /api/v2/score/ with a unique Idempotency-Key.
--
-- Environment:
--   BENCH_TOKEN   bearer token of a writer
--   BENCH_USERS   user ids, comma-separated; each request picks one at random
--   BENCH_PREFER  the Prefer header ("" for none)
--   BENCH_RUN     a prefix that makes the keys unique across runs
--   BENCH_DELAY   milliseconds each connection waits between requests (0: none)
-- At the end it prints one line "BENCH_JSON {...}" with the status counts and latencies.

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
  users = {}
  for id in string.gmatch(os.getenv("BENCH_USERS"), "%d+") do
    table.insert(users, id)
  end
  prefix = os.getenv("BENCH_RUN") .. "-" .. thread_id .. "-"
  pause = tonumber(os.getenv("BENCH_DELAY") or "0")
  headers = {
    ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
    ["Content-Type"] = "application/json",
  }
  local prefer = os.getenv("BENCH_PREFER") or ""
  if prefer ~= "" then
    headers["Prefer"] = prefer
  end
  sent = 0
  statuses = {}
end

function request()
  sent = sent + 1
  headers["Idempotency-Key"] = prefix .. sent
  local body = '{"user_id": ' .. users[math.random(#users)] .. ', "score": 1, "comment": "bench"}'
  return wrk.format("POST", "/api/v2/score/", headers, body)
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

if tonumber(os.getenv("BENCH_DELAY") or "0") > 0 then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, count))
  end
  io.write(string.format(
    'BENCH_JSON {"statuses": {%s}, "requests": %d, "errors": %d, "seconds": %.3f, ' ..
    '"p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\n',
    table.concat(parts, ", "), summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
