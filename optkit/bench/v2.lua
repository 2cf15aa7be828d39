-- optkit bench: wrk script that posts Open Inference Protocol v2 bodies.
--
-- init(args): args[1] is a file of "PATH<TAB>BODY" lines (bodies pre-encoded by
-- optkit); each becomes one pre-formatted request, and request() deals them in
-- turn so the server sees several distinct bodies (and models), not one.
-- done(): prints one line "OPTKIT_JSON {...}" with counts and latency
-- percentiles (microseconds) for optkit to parse.

local requests = {}
local index = 0

function init(args)
   local file = assert(io.open(args[1], "r"))
   for line in file:lines() do
      local tab = line:find("\t", 1, true)
      if tab then
         local path = line:sub(1, tab - 1)
         local body = line:sub(tab + 1)
         requests[#requests + 1] = wrk.format("POST", path,
            { ["Content-Type"] = "application/json" }, body)
      end
   end
   file:close()
   assert(#requests > 0, "no request bodies in " .. args[1])
   index = math.random(#requests) - 1
end

function request()
   index = index % #requests + 1
   return requests[index]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'OPTKIT_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %d, "max": %d, "mean": %.2f, "stdev": %.2f, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
