--- dh3: the Lua client for the DH3 image-generation API.
--   local dh3 = require "dh3"
--   local client = assert(dh3.new{api_key = "..."})
--   local task = assert(client:create{prompt = "a lighthouse at dawn"})
--   assert(task:wait()); assert(task:download("out/"))
--
-- Requiring dh3 loads nothing else: the rest of the library, and with it libcurl (whose
-- dozens of shared libraries take some 20-30 ms to map on a Debian machine, bench/RESULTS.md),
-- is loaded by the first call that needs it, usually dh3.new. A host that requires its modules
-- while a frame is due pays nothing for dh3 until it makes a client, at a time of its choosing.

local M = {}

M.VERSION = "0.1.0"

--- A new client, or nil, err. See README.md for the options.
function M.new(opts)
  return require("dh3.client").new(opts, M.VERSION)
end

--- True when v is an error returned by dh3.
function M.is_error(v)
  return require("dh3.errors").is_error(v)
end

--- Seconds on a monotonic clock (CLOCK_MONOTONIC: it never jumps with the wall clock), as a
-- float: the clock of every dh3 deadline, for measuring time in your own loops. Only
-- differences mean anything. The first call loads dh3.core (and libcurl) if nothing has yet.
local core_now
function M.now()
  if not core_now then core_now = require("dh3.core").now end
  return core_now()
end

-- dh3.webhook (parse, deduplicator), loaded on first use.
return setmetatable(M, {
  __index = function(t, k)
    if k ~= "webhook" then return nil end
    local webhook = require "dh3.webhook"
    rawset(t, k, webhook)
    return webhook
  end,
})
