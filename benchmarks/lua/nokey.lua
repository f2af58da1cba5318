-- Pass-through path: a POST without an Idempotency-Key header.
function init(args)
  wrk.method = "POST"
  wrk.path = "/orders"
  wrk.body = '{"sku":"abc","qty":1}'
  wrk.headers["Content-Type"] = "application/json"
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
