-- Client-side pacing of creates: at most `qps` creates start within any sliding one-second window,
-- counted the way the service counts them. A slot is free again one second after the answer to
-- the create that used it came back (the server saw that create no later than that), so even with
-- network delays the server never sees qps+1 creates within one second.
local core = require "dh3.core"

local M = {}

local Pacer = {}
Pacer.__index = Pacer

local WINDOW = 1.0
local MARGIN = 0.002 -- clock granularity between us and the server
local POLL = 0.005   -- how often a waiter re-checks a slot still held by a create in flight

function M.new(qps)
  local slots = {}
  for i = 1, qps do slots[i] = 0 end -- the time each slot is free from; math.huge while in flight
  return setmetatable({ slots = slots, next_slot = 1 }, Pacer)
end

--- Waits (through `sleep`, which returns false when waiting must stop: the client is closing)
-- for a free slot and takes it; returns the slot for `release`, or nil when the wait was stopped.
-- Callers are served in the order they asked: each takes the next slot of the ring.
function Pacer:acquire(sleep)
  local i = self.next_slot
  self.next_slot = i % #self.slots + 1
  local slots = self.slots
  while true do
    local wait = slots[i] - core.now()
    if wait <= 0 then break end
    if not sleep(slots[i] == math.huge and POLL or wait) then return nil end
  end
  slots[i] = math.huge
  return i
end

--- The create that held slot i got its answer (or failed) now.
function Pacer:release(i)
  self.slots[i] = core.now() + WINDOW + MARGIN
end

return M
