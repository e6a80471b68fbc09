-- wrk script for REPLAY=1: a pool of distinct signed webhook POSTs, sent in
-- turn, so a route with replay_window records every request instead of
-- answering repeats.
--
--   POOL_FILE  lines "signature<TAB>body" (bench.py pool)
-- Everything else (method, headers, the WRK_JSON summary in done()) comes
-- from post.lua, loaded first. Requests are formatted once in init(); the
-- per-request cost in wrk is a table lookup, the same for every target.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")

local started = 0
function setup(thread)
  -- Threads start far apart in the pool so they never send one body at once.
  thread:set("offset", started * 1024)
  started = started + 1
end

local reqs = {}
local i = 0
function init(args)
  local path = assert(os.getenv("POOL_FILE"), "POOL_FILE is not set")
  for line in io.lines(path) do
    local sig, body = line:match("^(%x+)\t(.*)$")
    assert(sig, "malformed line in POOL_FILE")
    reqs[#reqs + 1] = wrk.format("POST", nil,
      { ["Content-Type"] = "application/json", ["X-Adsumo-Signature"] = sig }, body)
  end
  i = (offset or 0) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
