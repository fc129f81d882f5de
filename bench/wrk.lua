-- wrk script for bench/run.py: GET one path, with a random one of the cookies listed
-- (one "name=value" per line) in the file given as the second script argument, counts
-- responses that are not 2xx, and prints one machine-readable summary line.
--   wrk ... -s bench/wrk.lua http://127.0.0.1:PORT -- /path [cookie-file]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  path = args[1] or "/"
  cookies = {}
  if args[2] and args[2] ~= "" then
    for line in io.lines(args[2]) do
      if line ~= "" then cookies[#cookies + 1] = line end
    end
  end
  local salt = tonumber(string.match(tostring({}), "0x(%x+)") or "0", 16) or 0
  math.randomseed(os.time() + salt % 1000003)
  bad = 0
end

function request()
  if #cookies > 0 then
    return wrk.format("GET", path, { Cookie = cookies[math.random(#cookies)] })
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local non2xx = 0
  for _, thread in ipairs(threads) do
    non2xx = non2xx + (thread:get("bad") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    non2xx, latency:percentile(50), latency:percentile(99), latency.max))
end
