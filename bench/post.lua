-- wrk script: POST a chat completion the way a browser front-end would.
--   wrk ... -s post.lua URL -- same  NONCE   every request has the same body (cache hit path)
--   wrk ... -s post.lua URL -- vary  NONCE   every request differs in `user` (cache miss path)
-- NONCE keeps bodies of one run apart from the previous run's (the gateway's cache outlives runs).
--   wrk ... -s post.lua URL -- MODE  NONCE  N  also sets X-Forwarded-For to one of N client
--   addresses in turn (10.x.y.z), so a per-client rate limit sees N clients (0 or absent: none).
--   wrk ... -s post.lua URL -- MODE  NONCE  N  TOKENS  also sends `Authorization: Bearer <token>`
--   with the tokens of the file TOKENS (one a line) in turn, instead of the dummy key.
--   wrk ... -s post.lua URL -- MODE  NONCE  N  TOKENS  START  starts at the START-th token (the
--   runner continues where the previous run stopped, so a cycle longer than the gateway's
--   verified-token cache never finds a token there).
-- done() prints one line "BENCH_JSON {...}" that bench/run.py parses (latencies in microseconds).

local mode, nonce, counter, clients = "same", "0", 0, 0
local tokens, ntokens, start = {}, 0, 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Origin"] = "http://localhost:5173",
  ["Authorization"] = "Bearer x",
}
local head = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
  .. '{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64,"temperature":0,"user":"'
local fixed

function init(args)
  mode = args[1] or "same"
  nonce = args[2] or "0"
  clients = tonumber(args[3] or "0") or 0
  start = tonumber(args[5] or "0") or 0
  if args[4] and args[4] ~= "" then
    for line in io.lines(args[4]) do
      ntokens = ntokens + 1
      tokens[ntokens] = "Bearer " .. line
    end
  end
  fixed = wrk.format("POST", nil, headers, head .. "bench-" .. nonce .. '"}')
end

function request()
  if mode == "same" and clients == 0 and ntokens == 0 then
    return fixed
  end
  counter = counter + 1
  if clients > 0 then
    local c = counter % clients
    headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(c / 65536) % 256,
                                               math.floor(c / 256) % 256, c % 256)
  end
  if ntokens > 0 then
    headers["Authorization"] = tokens[(start + counter) % ntokens + 1]
  end
  local user = (mode == "same") and nonce or (nonce .. "-" .. counter)
  return wrk.format("POST", nil, headers, head .. "bench-" .. user .. '"}')
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.2f,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.2f,"stdev_us":%.2f,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, latency.stdev,
    e.connect, e.read, e.write, e.status, e.timeout))
end
