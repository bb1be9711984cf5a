-- wrk script for bench/shared.py: post.lua's requests (every body differs, N client addresses)
-- plus one line per second of wall time, "BENCH_SEC <unix second> <2xx> <429> <other status>",
-- so throughput and errors can be plotted over a run in which a store server dies.
--   wrk ... -s shared.lua URL -- NONCE N

local nonce, counter, clients = "0", 0, 0
local second, ok, limited, failed = 0, 0, 0, 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Origin"] = "http://localhost:5173",
}
local head = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],'
  .. '"max_tokens":64,"temperature":0,"user":"'

function init(args)
  nonce = args[1] or "0"
  clients = tonumber(args[2] or "0") or 0
end

function request()
  counter = counter + 1
  if clients > 0 then
    local c = counter % clients
    headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(c / 65536) % 256,
                                               math.floor(c / 256) % 256, c % 256)
  end
  return wrk.format("POST", nil, headers, head .. "shared-" .. nonce .. "-" .. counter .. '"}')
end

local function flush(now)
  if second > 0 and (ok + limited + failed) > 0 then
    io.write(string.format("BENCH_SEC %d %d %d %d\n", second, ok, limited, failed))
  end
  second, ok, limited, failed = now, 0, 0, 0
end

function response(status, headers, body)
  local now = os.time()
  if now ~= second then
    flush(now)
  end
  if status >= 200 and status < 300 then
    ok = ok + 1
  elseif status == 429 then
    limited = limited + 1
  else
    failed = failed + 1
  end
end
