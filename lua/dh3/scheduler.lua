-- Drives one engine for one client. Every dh3 call that waits (a transfer, a back-off, pacing)
-- goes through `await` or `sleep`: inside a coroutine started by `spawn` they yield, and `step`
-- resumes the coroutine when its transfer or timer is done; anywhere else they block, turning the
-- same loop, so work in flight for other coroutines keeps moving meanwhile.
local core = require "dh3.core"

local M = {}

local Scheduler = {}
Scheduler.__index = Scheduler

-- What our own yields carry, so a spawned function's bare coroutine.yield() is told apart from
-- a wait (it is treated as "resume me on the next step").
local WAIT = setmetatable({}, { __name = "dh3.wait" })

-- The longest a blocking wait stays inside one perform: a wake-up on network activity comes
-- sooner; this only bounds the time between checks of the blocking caller's own condition.
local MAX_BLOCK = 1.0

-- Timers live in a binary min-heap of {at, co} ordered by `at`.
local function heap_push(heap, item)
  local i = #heap + 1
  heap[i] = item
  while i > 1 do
    local parent = i // 2
    if heap[parent].at <= item.at then break end
    heap[i], heap[parent] = heap[parent], item
    i = parent
  end
end

local function heap_pop(heap)
  local top, n = heap[1], #heap
  local last = heap[n]
  heap[n] = nil
  n = n - 1
  if n > 0 then
    local i = 1
    heap[1] = last
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if l <= n and heap[l].at < heap[m].at then m = l end
      if r <= n and heap[r].at < heap[m].at then m = r end
      if m == i then break end
      heap[i], heap[m] = heap[m], heap[i]
      i = m
    end
  end
  return top
end

local function default_error_handler(err, co)
  io.stderr:write("dh3: error in a spawned coroutine: ", debug.traceback(co, tostring(err)), "\n")
end

function M.new(engine)
  return setmetatable({
    engine = engine,
    threads = {},   -- [coroutine] = true for every live coroutine started by spawn
    nthreads = 0,
    waiting = {},   -- [request] = coroutine suspended until that request completes
    finished = {},  -- [request] = result, for requests a blocking caller is waiting on
    timers = {},    -- heap of {at, co}
    ready = {},     -- coroutines that yielded on their own, resumed on the next step
    on_error = default_error_handler,
  }, Scheduler)
end

--- The running coroutine if it is one of ours, else nil (then waits block).
function Scheduler:current()
  local co, is_main = coroutine.running()
  if not is_main and self.threads[co] then return co end
  return nil
end

function Scheduler:_resume(co, ...)
  local ok, yielded = coroutine.resume(co, ...)
  if not ok then
    self.threads[co] = nil
    self.nthreads = self.nthreads - 1
    local handler_ok, handler_err = pcall(self.on_error, yielded, co)
    if not handler_ok then
      io.stderr:write("dh3: the error handler failed: ", tostring(handler_err), "\n")
    end
  elseif coroutine.status(co) == "dead" then
    self.threads[co] = nil
    self.nthreads = self.nthreads - 1
  elseif yielded ~= WAIT then
    self.ready[#self.ready + 1] = co
  end
end

--- Runs fn(...) in a new coroutine now, up to its first wait.
function Scheduler:spawn(fn, ...)
  local co = coroutine.create(fn)
  self.threads[co] = true
  self.nthreads = self.nthreads + 1
  self:_resume(co, ...)
  return co
end

--- How long a blocking loop may wait in one perform without making a timer late.
function Scheduler:_wait_limit(limit)
  local next_timer = self.timers[1]
  if #self.ready > 0 then return 0 end
  if next_timer then
    local until_timer = next_timer.at - core.now()
    if until_timer < limit then limit = until_timer end
  end
  return limit > 0 and limit or 0
end

--- One turn of the loop: transfers (waiting at most `wait` seconds), completions, due timers.
function Scheduler:step(wait)
  local engine = self.engine
  engine:perform(wait)
  while true do
    local res = engine:next_done()
    if not res then break end
    local req = res.request
    local co = self.waiting[req]
    if co then
      self.waiting[req] = nil
      self:_resume(co, res)
    else
      self.finished[req] = res
    end
  end
  local timers = self.timers
  if timers[1] then
    local now = core.now()
    while timers[1] and timers[1].at <= now do
      self:_resume(heap_pop(timers).co)
    end
  end
  local ready = self.ready
  if ready[1] then
    self.ready = {}
    for _, co in ipairs(ready) do self:_resume(co) end
  end
end

--- The result of a submitted request, once it completes.
function Scheduler:await(req)
  local co = self:current()
  if co then
    self.waiting[req] = co
    return coroutine.yield(WAIT)
  end
  local finished = self.finished
  while not finished[req] do
    self:step(self:_wait_limit(MAX_BLOCK))
  end
  local res = finished[req]
  finished[req] = nil
  return res
end

--- Waits `seconds` (yielding in a spawned coroutine, else blocking while driving the loop).
function Scheduler:sleep(seconds)
  local co = self:current()
  local at = core.now() + seconds
  if co then
    heap_push(self.timers, { at = at, co = co })
    coroutine.yield(WAIT)
    return
  end
  while true do
    local left = at - core.now()
    if left <= 0 then return end
    self:step(self:_wait_limit(left))
  end
end

--- Things still to do: live spawned coroutines and transfers in flight.
function Scheduler:pending()
  local in_flight = self.engine:pending()
  return self.nthreads + in_flight
end

--- Advances everything without waiting; returns the number of things pending.
function Scheduler:update()
  self:step(0)
  return self:pending()
end

--- Blocks until nothing is pending.
function Scheduler:run()
  while self:pending() > 0 do
    self:step(self:_wait_limit(MAX_BLOCK))
  end
end

return M
