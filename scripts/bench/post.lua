-- wrk script for scripts/bench/run.py: POST JSON bodies with an Authorization header.
--
-- Driven by environment variables (wrk passes no per-thread arguments otherwise):
--   BENCH_BODIES  file with one JSON body per line; more than one line = round-robin mix
--   BENCH_AUTH    bearer token (optional)
-- Runs are bounded by -d only: wrk's main thread sleeps the full duration even when a
-- thread stops early, so run.py's soak counts requests over short runs instead.
-- `done` prints one machine-readable line, BENCH_RESULT {...}, with latencies in microseconds.

local bodies = {}
local file = assert(io.open(os.getenv("BENCH_BODIES"), "r"))
for line in file:lines() do
  if #line > 0 then
    bodies[#bodies + 1] = line
  end
end
file:close()

wrk.method = "POST"
wrk.body = bodies[1]
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and #auth > 0 then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

if #bodies > 1 then
  local formatted, i = {}, 0
  init = function(args)
    for n, body in ipairs(bodies) do
      formatted[n] = wrk.format("POST", nil, nil, body)
    end
  end
  request = function()
    i = i % #formatted + 1
    return formatted[i]
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max
  ))
end
