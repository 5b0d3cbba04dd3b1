-- wrk script: follow-up messages of pre-locked senders, 1.52 KB WAHA-style
-- bodies. Requests are built once at start and cycled, except for the
-- WhatsApp message id, which is new in every request: the router forwards a
-- message once (dedupe on the id), so a replayed id would measure its
-- duplicate path instead of a forward. The id is a fixed-width counter, so
-- each request is one concatenation of prebuilt parts. Arguments after `--`:
--   PATH (/api/gateway/waha) SENDERS (100000) API_KEY DELAY_MS (0: closed loop)
local path, senders, api_key, delay_ms = "/api/gateway/waha", 100000, "", 0
local heads, tails, n, counter = {}, {}, 0, 0
local pad = string.rep("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 11)

-- The id's key part is 3EB0 + 16 hex digits; `ID` marks where it goes.
local ID = "@@ID@@"

local function body(from, text, i)
  local id = string.format("false_%s_3EB0%s", from, ID)
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
  -- Ids never repeat across runs either (the router keeps its dedupe window):
  -- a run of under a million requests a second stays inside its own range.
  counter = os.time() * 1000000
  for i = 1, 2000 do
    -- Pre-locked senders are 971600000000 + k, k in [0, SENDERS): see compare.sh.
    local from = string.format("%d@c.us", 971600000000 + math.random(0, senders - 1))
    local template = body(from, "is the flat still available?", i)
    -- The body length does not depend on the id (fixed width), so the request
    -- line and headers, Content-Length included, are built once.
    local sample = template:gsub(ID, string.rep("0", 16), 1)
    local request = wrk.format("POST", path, headers, sample)
    local cut = request:find("3EB0" .. string.rep("0", 16), 1, true) + 4
    heads[i] = request:sub(1, cut - 1)
    tails[i] = request:sub(cut + 16)
  end
end

function request()
  n = n % #heads + 1
  counter = counter + 1
  return heads[n] .. string.format("%016X", counter) .. tails[n]
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
