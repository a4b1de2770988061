-- Client-side pacing of creates: at most `qps` creates start within any sliding one-second window,
-- counted the way the service counts them. A slot is free again one second after the answer to
-- the create that used it came back (the server saw that create no later than that), so even with
-- network delays the server never sees qps+1 creates within one second.
--
-- Callers are served in the order they asked. Only the first in line waits for a slot: until the
-- earliest slot frees (a sleep), or, when every slot is held by a create in flight, until one is
-- released (an event). The others wait for their turn on an event of their own. Nothing polls.
local scheduler = require "dh3.scheduler"

local M = {}

local Pacer = {}
Pacer.__index = Pacer

local WINDOW = 1.0
local MARGIN = 0.002 -- clock granularity between us and the server
local HELD = math.huge -- a slot's "free from" while its create is in flight

--- A pacer of `qps` slots, waiting through `sched` (a dh3.scheduler).
function M.new(qps, sched)
  local slots = {}
  for i = 1, qps do slots[i] = 0 end -- the time each slot is free from
  return setmetatable({ slots = slots, sched = sched, queue = {}, first = 1, last = 0 }, Pacer)
end

-- The slot that frees first, and when.
function Pacer:_earliest()
  local slots, best = self.slots, 1
  for i = 2, #slots do
    if slots[i] < slots[best] then best = i end
  end
  return best, slots[best]
end

-- Lets the first in line look at the slots again, once the caller has gone on (a create that
-- took a slot is sent before the next in line takes one).
function Pacer:_wake_first()
  local head = self.queue[self.first]
  if head then self.sched:signal(head) end
end

--- Waits for a free slot and takes it; returns the slot for `release`, or nil when the client
-- began closing meanwhile (then nothing is held, and the create must not be sent).
function Pacer:acquire()
  local sched = self.sched
  if sched.closing then return nil end
  local queue = self.queue
  local turn = scheduler.event()
  self.last = self.last + 1
  queue[self.last] = turn
  while true do
    if sched.closing then
      if queue[self.first] == turn then -- the others behind it are woken by abort()
        queue[self.first] = nil
        self.first = self.first + 1
      end
      return nil
    end
    turn.set = false
    if queue[self.first] == turn then
      local i, free_at = self:_earliest()
      local wait = free_at - sched.now()
      if wait <= 0 then
        queue[self.first] = nil
        self.first = self.first + 1
        self.slots[i] = HELD
        self:_wake_first() -- the next in line may find a free slot too
        return i
      end
      if free_at == HELD then
        sched:wait_event(turn) -- until a create in flight releases its slot
      else
        sched:sleep(wait) -- a release cannot make a slot free sooner than the earliest already is
      end
    else
      sched:wait_event(turn) -- until it is first in line
    end
  end
end

--- The create that held slot i got its answer (or failed) now.
function Pacer:release(i)
  self.slots[i] = self.sched.now() + WINDOW + MARGIN
  self:_wake_first()
end

--- The client is closing: every caller still waiting gives up (acquire returns nil).
function Pacer:abort()
  for k = self.first, self.last do
    local turn = self.queue[k]
    if turn then self.sched:set_event(turn) end
  end
  self.queue, self.first, self.last = {}, 1, 0
end

return M
