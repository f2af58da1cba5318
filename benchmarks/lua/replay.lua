-- Replay path: the same Idempotency-Key and body on every request.
-- Argument 1: the key, already primed by one request before the run.
-- No request() function, so wrk builds the request once (a static script).
function init(args)
  wrk.method = "POST"
  wrk.path = "/orders"
  wrk.body = '{"sku":"abc","qty":1}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Idempotency-Key"] = args[1] or "replay-key-1"
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
