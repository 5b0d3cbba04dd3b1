-- wrk script: first contacts. Every request is a new sender whose message
-- carries a deep link, so each one is a durable lock (CAS + group-commit flush).
-- Arguments after `--`: TENANTS (1000) API_KEY RUN (distinguishes runs on one data dir)
local tenants, api_key, run = 1000, "", 0
local n = 0
local pad = string.rep("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 8)
local headers = {}

function init(args)
  tenants = tonumber(args[1] or tenants)
  api_key = args[2] or ""
  run = tonumber(args[3] or 0)
  headers = { ["Content-Type"] = "application/json", ["X-Api-Key"] = api_key }
end

function request()
  n = n + 1
  -- 9725 + run (1 digit) + 7-digit counter: never one of the pre-locked 9716... senders.
  local from = string.format("9725%d%07d@c.us", run % 10, n)
  local tenant = 1 + n % tenants
  local body = string.format('{"event":"message","session":"default","payload":{"id":"false_%s_3EB0%012X",'
    .. '"from":"%s","fromMe":false,"to":"971557357753@c.us","body":"Hi! start_realty_%d",'
    .. '"_data":{"notifyName":"Client","quotedContext":"%s"}}}', from, n, from, tenant, pad)
  return wrk.format("POST", "/api/gateway/waha", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status))
end
