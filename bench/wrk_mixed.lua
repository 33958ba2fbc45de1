-- wrk script: each request is drawn at random from WRK_REQUESTS_FILE, one "METHOD<TAB>PATH<TAB>BODY"
-- per line (BODY may be empty); prints one JSON line with latency percentiles, like wrk_report.lua.
local requests = {}

init = function(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
  for line in io.lines(os.getenv("WRK_REQUESTS_FILE")) do
    local method, path, body = line:match("^([^\t]*)\t([^\t]*)\t?(.*)$")
    local headers = {}
    if body and #body > 0 then headers["Content-Type"] = "application/json" else body = nil end
    requests[#requests + 1] = wrk.format(method, path, headers, body)
  end
end

request = function()
  return requests[math.random(#requests)]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
