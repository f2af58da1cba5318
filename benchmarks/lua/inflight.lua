-- In-flight path: duplicates of a request that is still running (expected: 409).
-- Argument 1: the key held by the slow request; argument 2: its sleep in ms, which
-- must match the priming request so that both carry the same fingerprint.
function init(args)
  wrk.method = "POST"
  wrk.path = "/slow?ms=" .. (args[2] or "2000")
  wrk.body = '{"sku":"abc","qty":1}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Idempotency-Key"] = args[1] or "inflight-key-1"
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
