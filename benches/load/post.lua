-- wrk script: the same signed webhook POST on every request.
--
-- Inputs come from the environment so one script serves every target:
--   BODY_FILE  path of the request body (bytes sent exactly as stored)
--   SIGNATURE  hex HMAC-SHA256 of that body (from `hookgate sign`)
-- Because no request() function is defined, wrk serialises the request once
-- and replays the same bytes: the load generator spends no CPU building it.

local function read_all(path)
  local f = assert(io.open(path, "rb"), "cannot open BODY_FILE " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

wrk.method = "POST"
wrk.body = read_all(assert(os.getenv("BODY_FILE"), "BODY_FILE is not set"))
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Adsumo-Signature"] = assert(os.getenv("SIGNATURE"), "SIGNATURE is not set")
-- wrk adds Content-Length itself; HTTP/1.1 keep-alive is its default.

-- Machine-readable summary on the last line of wrk's output, so the helper
-- never has to parse human units ("1.23ms", "12.3k"). Latencies are in
-- microseconds, duration in microseconds. errors.status counts the responses
-- wrk prints as "Non-2xx or 3xx responses".
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
