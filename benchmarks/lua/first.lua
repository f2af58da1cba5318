-- First-execution path: every request carries an Idempotency-Key never sent before.
-- Argument 1 (optional): a key prefix unique to this wrk invocation.
local prefix = "first"
local counter = 0
local body = '{"sku":"abc","qty":1}'

local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
end

function init(args)
  if args[1] then prefix = args[1] end
  prefix = prefix .. "-" .. tostring(thread_id or 0)
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/orders", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. counter,
  }, body)
end

-- One parseable summary line for run.py (latencies in microseconds).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%.0f duration_us=%.0f status_errors=%.0f connect_errors=%.0f read_errors=%.0f"
      .. " write_errors=%.0f timeouts=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f mean_us=%.0f max_us=%.0f\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
