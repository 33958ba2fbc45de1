-- wrk script: every request asks for a venue slug never seen before (a random-slug flood).
local counter = 0
local prefix = "t"

setup = function(thread)
  thread:set("prefix", "t" .. tostring(thread.id or math.random(1, 1000000)))
end

init = function(args)
  prefix = prefix .. tostring(math.random(1, 1000000000))
end

request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/v1/delivery-order-price?venue_slug=flood-" .. prefix .. "-" .. counter ..
                    "&cart_value=1000&user_lat=60.17094&user_lon=24.93087")
end

done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"duration_us":%d}\n', summary.requests, summary.duration))
end
