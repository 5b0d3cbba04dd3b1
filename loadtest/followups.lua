-- wrk script: follow-up messages of pre-locked senders, 1.52 KB WAHA-style
-- bodies. Requests are built once at start (so wrk spends its CPU on sending,
-- not on Lua strings) and cycled. Arguments after `--`:
--   PATH (/api/gateway/waha) SENDERS (100000) API_KEY DELAY_MS (0: closed loop)
local path, senders, api_key, delay_ms = "/api/gateway/waha", 100000, "", 0
local requests, n = {}, 0
local pad = string.rep("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 11)

local function body(from, text, i)
  local id = string.format("false_%s_3EB0%016X", from, i)
  return string.format('{"id":"evt_%d","timestamp":%d,"event":"message","session":"default",'
    .. '"me":{"id":"971557357753@c.us","pushName":"Realty gateway"},'
    .. '"payload":{"id":"%s","timestamp":%d,"from":"%s","fromMe":false,"source":"app",'
    .. '"to":"971557357753@c.us","participant":null,"body":"%s","hasMedia":false,"media":null,'
    .. '"ack":1,"ackName":"SERVER","vCards":[],"_data":{"id":{"fromMe":false,"remote":"%s",'
    .. '"_serialized":"%s"},"type":"chat","t":%d,"notifyName":"Client","from":"%s",'
    .. '"to":"971557357753@c.us","self":"in","isNewMsg":true,"star":false,"recvFresh":true,'
    .. '"broadcast":false,"mentionedJidList":[],"isForwarded":false,"links":[],"quotedContext":"%s"}},'
    .. '"engine":"WEBJS","environment":{"version":"2024.10.1","engine":"WEBJS","tier":"PLUS"}}',
    i, 1700000000000 + i, id, 1700000000 + i, from, text, from, id, 1700000000 + i, from, pad)
end

function init(args)
  path = args[1] or path
  senders = tonumber(args[2] or senders)
  api_key = args[3] or api_key
  delay_ms = tonumber(args[4] or 0)
  math.randomseed(os.time())
  local headers = { ["Content-Type"] = "application/json", ["X-Api-Key"] = api_key }
  for i = 1, 2000 do
    -- Pre-locked senders are 971600000000 + k, k in [0, SENDERS): see compare.sh.
    local from = string.format("%d@c.us", 971600000000 + math.random(0, senders - 1))
    requests[i] = wrk.format("POST", path, headers, body(from, "is the flat still available?", i))
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end

function delay()
  return delay_ms
end

function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status))
end
