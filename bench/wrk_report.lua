-- wrk script: prints one JSON line with latency percentiles.  Requests: WRK_METHOD/WRK_BODY for one
-- request repeated, or, when WRK_REQUESTS_FILE is set, each request drawn at random from that file,
-- one "METHOD<TAB>PATH<TAB>BODY" per line (BODY may be empty).
wrk.method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body and #body > 0 then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local requests_file = os.getenv("WRK_REQUESTS_FILE")
if requests_file and #requests_file > 0 then
  local requests = {}

  init = function(args)
    math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
    for line in io.lines(requests_file) do
      local method, path, line_body = line:match("^([^\t]*)\t([^\t]*)\t?(.*)$")
      local headers = {}
      if line_body and #line_body > 0 then headers["Content-Type"] = "application/json" else line_body = nil end
      requests[#requests + 1] = wrk.format(method, path, headers, line_body)
    end
  end

  request = function()
    return requests[math.random(#requests)]
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
