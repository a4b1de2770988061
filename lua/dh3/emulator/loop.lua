-- A small cooperative event loop: coroutines that wait for sockets or time, driven by one
-- socket.select per step. The HTTP server, outgoing callbacks and latency waits all live in one
-- loop so that nothing a single client does can stall the others, and so that a host program
-- (the client's webhook receiver, a game's frame) can drive it with step(0).
--
--   local loop = require("dh3.emulator.loop").new()
--   loop:spawn(function() loop:sleep(0.5); print("later") end)
--   while loop:pending() > 0 do loop:step(1) end
--
-- Waiting functions (sleep, wait_readable, wait_writable, suspend) must be called from inside a
-- coroutine started by this loop's spawn.
local socket = require "socket"
local heap = require "dh3.heap"

local M = {}

local Loop = {}
Loop.__index = Loop

M.now = socket.gettime

--- A new loop. opts.on_error(message) receives errors raised inside spawned coroutines
-- (default: one line on stderr); the loop goes on either way.
function M.new(opts)
  opts = opts or {}
  return setmetatable({
    readers = {}, -- socket -> waiter
    writers = {}, -- socket -> waiter
    timers = {},  -- binary min-heap of waiters by .at
    ready = {},   -- FIFO of {co, ...} to resume at the next chance
    count = 0,    -- live coroutines started by spawn
    seq = 0,
    stale = 0,    -- timers already woken otherwise, still in the heap
    on_error = opts.on_error or function(msg)
      io.stderr:write("dh3-emulator: ", msg, "\n")
    end,
  }, Loop)
end

function Loop:now()
  return socket.gettime()
end

-- The timers: dh3.heap, keyed by (at, seq) so equal deadlines fire in the order they were set.
local heap_push, heap_pop, before = heap.push, heap.pop, heap.before

-- Resumes a coroutine and reports its death by error; a coroutine that yields has registered
-- what it waits for before yielding.
function Loop:resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if coroutine.status(co) == "dead" then
    self.count = self.count - 1
    if not ok then
      self.on_error(debug.traceback(co, tostring(err)))
    end
  end
end

--- Runs fn(...) in a new coroutine at once (until its first wait); returns the coroutine.
function Loop:spawn(fn, ...)
  local co = coroutine.create(fn)
  self.count = self.count + 1
  self:resume(co, ...)
  return co
end

--- Number of coroutines still alive (waiting or ready).
function Loop:pending()
  return self.count
end

-- A waiter is woken once, by whichever comes first: its socket, its deadline, or wake().
-- Entries left behind in other structures are recognised as stale by .done.
local function new_waiter(self, co, deadline)
  self.seq = self.seq + 1
  local w = { co = co, at = deadline, seq = self.seq, done = false }
  if deadline then heap_push(self.timers, w) end
  return w
end

local function finish(self, w, ...)
  if w.done then return end
  w.done = true
  if w.at and not w.popped then self.stale = self.stale + 1 end
  if w.sock then
    local map = w.kind == "read" and self.readers or self.writers
    if map[w.sock] == w then map[w.sock] = nil end
  end
  local r = self.ready
  r[#r + 1] = table.pack(w.co, ...)
end

local function current()
  local co, main = coroutine.running()
  if main then error("dh3.emulator.loop: waiting outside a loop coroutine", 3) end
  return co
end

local function wait_socket(self, sock, kind, deadline)
  local co = current()
  local map = kind == "read" and self.readers or self.writers
  if map[sock] then error("dh3.emulator.loop: two coroutines wait on one socket", 3) end
  local w = new_waiter(self, co, deadline)
  w.sock, w.kind = sock, kind
  map[sock] = w
  return coroutine.yield()
end

--- Waits until sock is readable; true, or nil, "timeout" at deadline (absolute, loop:now() based).
function Loop:wait_readable(sock, deadline)
  return wait_socket(self, sock, "read", deadline)
end

--- Waits until sock is writable; true, or nil, "timeout" at deadline.
function Loop:wait_writable(sock, deadline)
  return wait_socket(self, sock, "write", deadline)
end

--- Stops waiting on sock (before closing it): a waiter still registered gets nil, "closed".
function Loop:forget(sock)
  local r, w = self.readers[sock], self.writers[sock]
  if r then finish(self, r, nil, "closed") end
  if w then finish(self, w, nil, "closed") end
end

--- Sleeps for seconds (0 yields once, letting everything ready run first).
function Loop:sleep(seconds)
  local w = new_waiter(self, current(), self:now() + math.max(0, seconds))
  w.sleeping = true
  return coroutine.yield()
end

--- A one-shot wake-up for the running coroutine, to hand to whoever will finish its work:
--   local token = loop:token(deadline); give(token); local ... = loop:suspend()
-- suspend() returns what wake(token, ...) passed, or nil, "timeout" at the deadline. Nothing else
-- may wait between token() and suspend(), or the wake would resume the wrong wait.
function Loop:token(deadline)
  return new_waiter(self, current(), deadline)
end

function Loop:suspend()
  return coroutine.yield()
end

--- Wakes the coroutine behind token with values; false if it was already woken or timed out.
function Loop:wake(token, ...)
  if token.done then return false end
  finish(self, token, ...)
  return true
end

local function run_ready(self)
  -- coroutines woken while this batch runs wait for the next batch, so one step is bounded
  local batch = self.ready
  if #batch == 0 then return end
  self.ready = {}
  for i = 1, #batch do
    local item = batch[i]
    self:resume(item[1], table.unpack(item, 2, item.n))
  end
end

-- Pops the earliest timer, keeping count of the stale ones.
local function pop_timer(self)
  local w = heap_pop(self.timers)
  w.popped = true
  if w.done then self.stale = self.stale - 1 end
  return w
end

-- Most socket waits carry a deadline (the idle timeout) and end long before it; their heap entries
-- would pile up for that long under load. Past a threshold, rebuild the heap without them.
local function compact_timers(self)
  if self.stale < 1024 or self.stale * 2 < #self.timers then return end
  local live = {}
  for _, w in ipairs(self.timers) do
    if not w.done then live[#live + 1] = w end
  end
  table.sort(live, before) -- a sorted array is a valid heap
  self.timers, self.stale = live, 0
end

local function fire_timers(self, now)
  local h = self.timers
  while h[1] and h[1].at <= now do
    local w = pop_timer(self)
    if not w.done then
      if w.sleeping then
        finish(self, w, true)
      else
        finish(self, w, nil, "timeout")
      end
    end
  end
end

--- What a host that waits in its own poll (the client's engine, through curl_multi_poll) needs in
-- order to wait for this loop too: fills `into` with the descriptors waiting to be read, and
-- returns it with the longest the host may wait (0 when something is ready or waits to write,
-- nil when only sockets matter). The host calls step(0) after its wait.
function Loop:wait_set(into)
  local n = 0
  for sock in pairs(self.readers) do
    n = n + 1
    into[n] = sock:getfd()
  end
  for i = #into, n + 1, -1 do into[i] = nil end
  if #self.ready > 0 or next(self.writers) then return into, 0 end
  local h = self.timers
  while h[1] and h[1].done do pop_timer(self) end
  if h[1] then return into, math.max(0, h[1].at - self:now()) end
  return into, nil
end

--- One turn: runs what is ready, does at most one select (waiting at most timeout seconds, less
-- when a timer is due sooner), then runs what it woke. Returns the number of live coroutines.
function Loop:step(timeout)
  timeout = timeout or 0
  run_ready(self)
  local now = self:now()
  fire_timers(self, now)
  if #self.ready > 0 then timeout = 0 end
  compact_timers(self)
  local h = self.timers
  while h[1] and h[1].done do pop_timer(self) end
  if h[1] then timeout = math.max(0, math.min(timeout, h[1].at - now)) end

  local recvt, sendt = {}, {}
  for sock in pairs(self.readers) do recvt[#recvt + 1] = sock end
  for sock in pairs(self.writers) do sendt[#sendt + 1] = sock end
  if #recvt + #sendt > 0 or timeout > 0 then
    local readable, writable = socket.select(recvt, sendt, timeout)
    for _, sock in ipairs(readable) do
      local w = self.readers[sock]
      if w then finish(self, w, true) end
    end
    for _, sock in ipairs(writable) do
      local w = self.writers[sock]
      if w then finish(self, w, true) end
    end
  end
  fire_timers(self, self:now())
  run_ready(self)
  return self.count
end

return M
