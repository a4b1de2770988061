-- Drives one engine for one client. Every dh3 call that waits (a transfer, a back-off, pacing)
-- goes through `await` or `sleep`: inside a coroutine started by `spawn` they yield, and `step`
-- resumes the coroutine when its transfer or timer is done; anywhere else they block, turning the
-- same loop, so work in flight for other coroutines keeps moving meanwhile.
local core = require "dh3.core"
local heap = require "dh3.heap"
local compat = require "dh3.compat"

local M = {}

-- compat.running: (co, is_main) on every Lua, and the spawned coroutine even from inside a
-- compat.pcall on plain 5.1 (which runs its function in a coroutine of its own)
local running, resume, yield, co_status = compat.running, coroutine.resume, coroutine.yield, coroutine.status
local xpcall_args = compat.xpcall

local Scheduler = {}
Scheduler.__index = Scheduler

-- What our own yields carry, so a spawned function's bare coroutine.yield() is told apart from
-- a wait (it is treated as "resume me on the next step").
local WAIT = setmetatable({}, { __name = "dh3.wait" })

-- What `await` returns for a request cancelled through its token.
M.CANCELLED = setmetatable({ cancelled = true }, { __name = "dh3.cancelled" })
local CANCELLED = M.CANCELLED

-- The longest a blocking wait stays inside one perform: a wake-up on network activity comes
-- sooner; this only bounds the time between checks of the blocking caller's own condition.
local MAX_BLOCK = 1.0
local PROGRESS_PERIOD = 0.1

-- Where an error of a spawned coroutine or of a user's callback goes by default. `trace`, for a
-- callback, is the traceback taken where it raised (a coroutine's is read from the coroutine).
local function default_error_handler(err, co, trace)
  if trace then
    io.stderr:write("dh3: error in a callback: ", tostring(err), "\n", trace, "\n")
  elseif co then
    io.stderr:write("dh3: error in a spawned coroutine: ", debug.traceback(co, tostring(err)), "\n")
  else
    io.stderr:write("dh3: error: ", tostring(err), "\n")
  end
end

--- A scheduler driving `engine` (a dh3.core engine, or a stand-in with the same methods), its
-- time read from `now` (default dh3.core.now): every timing decision of dh3 (timers, deadlines,
-- pacing, polling intervals) reads sched.now, so a spec can run them on a clock it drives.
function M.new(engine, now)
  return setmetatable({
    engine = engine,
    now = now or core.now,
    threads = {},   -- [coroutine] = true for every live coroutine started by spawn
    nthreads = 0,
    -- [coroutine] = the request it is suspended on (false between waits). Keyed by coroutine, a
    -- small stable set, rather than by request: a table whose keys churn with every request
    -- rebuilds itself on every insert once full (bench/RESULTS.md).
    awaiting = {},
    finished = {},  -- [request] = result, for requests a blocking caller is waiting on
    dropped = {},   -- [request] = true: its result, when it comes, is for no one (see drop)
    timers = {},    -- a heap (dh3.heap) of {at, co}
    ready = {},     -- coroutines that yielded on their own, resumed on the next step
    sources = {},   -- I/O of our own (a webhook receiver): objects with wait_set() and step(0)
    source_fds = {},
    progress = {},  -- [request] = function(bytes, total), called when bytes change
    progress_seen = {}, -- [request] = bytes at the last call
    on_error = default_error_handler,
    semaphores = {}, -- made by semaphore(): begin_close turns their waiters away
    closing = false, -- set by begin_close: waits end at once, nothing new starts
  }, Scheduler)
end

--- Hands an error to the on_error handler; a handler that fails itself is reported on stderr.
function Scheduler:report(err, co, trace)
  local ok, handler_err = pcall(self.on_error, err, co, trace)
  if not ok then
    io.stderr:write("dh3: the error handler failed: ", tostring(handler_err), "\n")
  end
end

local traceback = debug.traceback
local function with_traceback(e)
  return { e, traceback("", 2) } -- built only when a callback raised
end

--- Calls a user's callback, protected: its error goes to the on_error handler and never unwinds
-- the loop or the dh3 call that happened to be driving it (a create in flight must not die
-- because a progress bar raised). Every function the user hands dh3 is called through here.
-- Returns true when it ran to its end.
-- A callback must not yield, nor call a dh3 function that waits from inside a spawned coroutine:
-- on plain Lua 5.1 that is an error ("attempt to yield across metamethod/C-call boundary"),
-- reported here like any other; elsewhere the yield would suspend the loop's caller.
function Scheduler:call(fn, ...)
  local ok, caught = xpcall_args(fn, with_traceback, ...)
  if not ok then
    local co, is_main = running()
    self:report(caught[1], not is_main and co or nil, caught[2])
  end
  return ok
end

--- The running coroutine if it is one of ours, else nil (then waits block).
local function current(self)
  local co, is_main = running()
  if not is_main and self.threads[co] then return co end
  return nil
end

function Scheduler:_resume(co, ...)
  local ok, yielded = resume(co, ...)
  if yielded == WAIT then return end -- the common case: it waits on one of ours again
  if not ok then
    self.threads[co] = nil
    self.awaiting[co] = nil
    self.nthreads = self.nthreads - 1
    self:report(yielded, co)
  elseif co_status(co) == "dead" then
    self.threads[co] = nil
    self.awaiting[co] = nil
    self.nthreads = self.nthreads - 1
  else -- a bare coroutine.yield() of the spawned function's own: resumed on the next step
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
  -- a download's progress is read between waits: a bar fed by a blocking call moves 10 times a second
  if limit > PROGRESS_PERIOD and next(self.progress) then limit = PROGRESS_PERIOD end
  if next_timer then
    local until_timer = next_timer.at - self.now()
    if until_timer < limit then limit = until_timer end
  end
  return limit > 0 and limit or 0
end

--- One turn of the loop: transfers (waiting at most `wait` seconds), completions, due timers.
function Scheduler:step(wait)
  local engine = self.engine
  local sources = self.sources
  if sources[1] then
    -- one wait for libcurl's sockets and ours: curl_multi_poll watches both
    local fds = self.source_fds
    local n = 0
    for _, src in ipairs(sources) do
      local set, limit = src:wait_set()
      for _, fd in ipairs(set) do n = n + 1; fds[n] = fd end
      if limit and limit < wait then wait = limit end
    end
    for i = #fds, n + 1, -1 do fds[i] = nil end
    engine:perform(wait, fds)
    for _, src in ipairs(sources) do src:step(0) end
  else
    engine:perform(wait)
  end
  local awaiting, progress = self.awaiting, self.progress
  while true do
    local res, co = engine:next_done() -- the context: the coroutine that made the request
    if not res then break end
    local req = res.request
    -- a download that ended within one turn is still seen whole by its progress callback
    local fn = progress[req]
    if fn then self:_progress_of(req, fn) end
    if co and awaiting[co] == req then
      awaiting[co] = false
      self:_resume(co, res)
    elseif self.dropped[req] then
      self.dropped[req] = nil
    else
      self.finished[req] = res
    end
  end
  if next(self.progress) then self:_report_progress() end
  local timers = self.timers
  if timers[1] then
    local now = self.now()
    while timers[1] and timers[1].at <= now do
      local timer = heap.pop(timers)
      if not timer.cancelled then self:_resume(timer.co) end
    end
  end
  local ready = self.ready
  if ready[1] then
    self.ready = {}
    for _, co in ipairs(ready) do self:_resume(co) end
  end
end

--- What a request's `context` option must be so that its completion finds its way back to the
-- coroutine making it: the running coroutine if it is one of ours, else false (a blocking caller).
function Scheduler:context()
  return current(self) or false
end

--- Starts a transfer: `opts` are engine:request's options, built by the caller for this request
-- alone, with context = self:context(). Returns the request, or nil, message (and a reason).
function Scheduler:request(opts)
  return self.engine:request(opts)
end

--- Forgets `req`: cancelled if still in flight, and its result, if it has come or comes later,
-- is thrown away (a caller that gave up on it must not leave it here for ever).
function Scheduler:drop(req)
  self.progress[req], self.progress_seen[req] = nil, nil
  if req:cancel() then return end
  if self.finished[req] then
    self.finished[req] = nil
  else
    self.dropped[req] = true
  end
end

--- The result of a submitted request, once it completes (M.CANCELLED when `token` was cancelled
-- meanwhile). `token`, optional, is a table through which `cancel` can stop the wait.
function Scheduler:await(req, token)
  local res
  local co = current(self)
  if token then token.req, token.co = req, co end
  if co then
    local finished = self.finished[req] -- it may have completed while this coroutine did other work
    if finished then
      self.finished[req] = nil
      res = finished
    else
      self.awaiting[co] = req
      res = yield(WAIT)
    end
  else
    local finished = self.finished
    while not finished[req] do
      if self.closed then -- closed from a callback under this very wait: the engine is gone
        if token then token.req = nil end
        return CANCELLED
      end
      self:step(self:_wait_limit(MAX_BLOCK))
    end
    res = finished[req]
    finished[req] = nil
  end
  if token then token.req = nil end
  return res
end

--- Waits `seconds` (yielding in a spawned coroutine, else blocking while driving the loop).
-- A cancel of `token` ends the wait early. False when the client is closing (then it does not
-- wait at all, and the caller must give up rather than wait again), else true.
function Scheduler:sleep(seconds, token)
  if self.closing then return false end
  local co = current(self)
  local at = self.now() + seconds
  if co then
    local timer = { at = at, co = co }
    if token then token.timer = timer end
    heap.push(self.timers, timer)
    coroutine.yield(WAIT)
    if token then token.timer = nil end
    return not self.closing
  end
  while not (token and (token.cancelled or token.woken)) and not self.closing do
    local left = at - self.now()
    if left <= 0 then break end
    self:step(self:_wait_limit(left))
  end
  return not self.closing
end

--- Stops whatever the owner of `token` (an operation: see Task:_op) waits on: its transfer is
-- cancelled (its await returns M.CANCELLED), its sleep or its wait for a slot ends, and
-- token.on_cancel(token), if set, runs. A transfer that already finished is delivered as usual:
-- the owner checks token.cancelled afterwards.
function Scheduler:cancel(token)
  token.cancelled = true
  local req = token.req
  if req and req:cancel() then
    token.req = nil
    local co = token.co
    if co and self.awaiting[co] == req then
      self.awaiting[co] = false
      self:_resume(co, CANCELLED)
    else
      self.finished[req] = CANCELLED -- for the blocking caller that is waiting on it
    end
  end
  self:_end_sleep(token)
  local waiter = token.waiter
  if waiter then -- waiting for a slot of a semaphore: it gives up its place in the queue
    token.waiter = nil
    waiter.abandoned = true
    if waiter.co then self:_resume(waiter.co, CANCELLED) end
  end
  if token.on_cancel then token.on_cancel(token) end
end

-- Resumes the owner of `token` now if it sleeps in a spawned coroutine (a blocking sleep sees the
-- token's flags instead).
function Scheduler:_end_sleep(token)
  local timer = token.timer
  if timer then
    token.timer = nil
    timer.cancelled = true
    self:_resume(timer.co)
  end
end

--- Ends the sleep of the owner of `token` early without cancelling anything (news arrived: a
-- webhook delivery), and runs token.on_wake(token), if set. The owner sees token.woken.
function Scheduler:wake(token)
  token.woken = true
  self:_end_sleep(token)
  if token.on_wake then token.on_wake(token) end
end

--- Adds an I/O source driven by this loop (see step); remove_source takes it out.
function Scheduler:add_source(src)
  self.sources[#self.sources + 1] = src
end

function Scheduler:remove_source(src)
  for i, s in ipairs(self.sources) do
    if s == src then table.remove(self.sources, i) return end
  end
end

--- Calls fn(bytes, total) from the loop whenever `req` has received more bytes; nil stops it.
function Scheduler:watch_progress(req, fn)
  self.progress[req] = fn
  self.progress_seen[req] = fn and -1 or nil
end

-- Calls fn, the progress callback of `req`, if its byte count moved since the last call.
function Scheduler:_progress_of(req, fn)
  local bytes, total = req:progress()
  if bytes ~= self.progress_seen[req] then
    self.progress_seen[req] = bytes
    self:call(fn, bytes, total)
  end
end

function Scheduler:_report_progress()
  for req, fn in pairs(self.progress) do self:_progress_of(req, fn) end
end

--- A counting semaphore of `n` slots (see acquire, release): bounds work that holds a scarce
-- resource, such as downloads, which each hold an open file.
function Scheduler:semaphore(n)
  local sem = { free = n, waiters = {}, first = 1, last = 0 }
  self.semaphores[#self.semaphores + 1] = sem
  return sem
end

--- Takes a slot of `sem`, waiting in order of arrival (yielding in a spawned coroutine, else
-- blocking while driving the loop). True, or false when `token` was cancelled or the client is
-- closing meanwhile (then no slot is held).
function Scheduler:acquire(sem, token)
  if self.closing then return false end
  if sem.free > 0 and sem.first > sem.last then
    sem.free = sem.free - 1
    return true
  end
  local co = current(self)
  local waiter = { co = co or false, granted = false, abandoned = false }
  sem.last = sem.last + 1
  sem.waiters[sem.last] = waiter
  if token then token.waiter = waiter end
  if co then
    local res = yield(WAIT)
    if token and token.waiter == waiter then token.waiter = nil end
    if res == CANCELLED then return false end
  else
    while not (waiter.granted or waiter.abandoned or self.closing) do
      self:step(self:_wait_limit(MAX_BLOCK))
    end
    if token and token.waiter == waiter then token.waiter = nil end
  end
  if waiter.granted then return true end
  waiter.abandoned = true
  return false
end

--- Takes a slot of `sem` only if one is free now and no one waits for it: true, else false.
function Scheduler:try_acquire(sem)
  if self.closing or sem.free == 0 or sem.first <= sem.last then return false end
  sem.free = sem.free - 1
  return true
end

--- Gives a slot of `sem` back: to the first waiter still waiting, else to the pool.
function Scheduler:release(sem)
  local waiters = sem.waiters
  while sem.first <= sem.last do
    local waiter = waiters[sem.first]
    waiters[sem.first] = nil
    sem.first = sem.first + 1
    if not waiter.abandoned then
      waiter.granted = true
      if waiter.co then self:_resume(waiter.co, true) end
      return
    end
  end
  sem.free = sem.free + 1
end

--- Starts closing: from now on every sleep ends at once and new waits for a slot fail; every
-- coroutine asleep is resumed, and every transfer awaited by a coroutine is cancelled except those
-- `keep[request]` names (creates in flight: their answers carry ids that were paid for).
-- The caller then drives step() until the kept transfers end.
function Scheduler:begin_close(keep)
  self.closing = true
  local cancel = {}
  for co, req in pairs(self.awaiting) do
    if req and not keep[req] then cancel[#cancel + 1] = co end
  end
  for _, co in ipairs(cancel) do
    local req = self.awaiting[co]
    if req and req:cancel() then
      self.awaiting[co] = false
      self:_resume(co, CANCELLED)
    end
  end
  local timers = self.timers
  while timers[1] do
    local timer = heap.pop(timers)
    if not timer.cancelled then
      timer.cancelled = true
      self:_resume(timer.co)
    end
  end
  for _, sem in ipairs(self.semaphores) do
    while sem.first <= sem.last do
      local waiter = sem.waiters[sem.first]
      sem.waiters[sem.first] = nil
      sem.first = sem.first + 1
      if not waiter.abandoned then
        waiter.abandoned = true
        if waiter.co then self:_resume(waiter.co, CANCELLED) end
      end
    end
  end
  local ready = self.ready
  self.ready = {}
  for _, co in ipairs(ready) do self:_resume(co) end
end

--- An event that coroutines and blocking callers can wait for (see wait_event, set_event).
function M.event()
  return { set = false, waiters = {} }
end

--- Waits until `ev` is set (yielding in a spawned coroutine, else blocking while driving the loop).
function Scheduler:wait_event(ev)
  if ev.set then return end
  local co = current(self)
  if co then
    ev.waiters[#ev.waiters + 1] = co
    coroutine.yield(WAIT)
    return
  end
  while not ev.set and not self.closed do
    self:step(self:_wait_limit(MAX_BLOCK))
  end
end

--- Sets `ev`; the coroutines waiting for it resume on the next turn of the loop, after the
-- caller has gone on (set_event resumes them at once, inside the caller's call).
function Scheduler:signal(ev)
  ev.set = true
  local waiters = ev.waiters
  if waiters[1] then
    ev.waiters = {}
    local ready = self.ready
    for _, co in ipairs(waiters) do ready[#ready + 1] = co end
  end
end

--- Sets `ev` and resumes the coroutines waiting for it.
function Scheduler:set_event(ev)
  ev.set = true
  local waiters = ev.waiters
  if waiters[1] then
    ev.waiters = {}
    for _, co in ipairs(waiters) do self:_resume(co) end
  end
end

--- Things still to do: live spawned coroutines and transfers in flight.
function Scheduler:pending()
  local in_flight = self.engine:pending()
  return self.nthreads + in_flight
end

--- Seconds until the scheduler has something to run by itself: 0 when a coroutine is ready,
-- else until its first timer (cancelled timers at the top are dropped, so they wake no one), or
-- nil when it has none. For a host loop's timer (Client:next_timeout).
function Scheduler:next_wake()
  if self.ready[1] then return 0 end
  local timers = self.timers
  while timers[1] and timers[1].cancelled do heap.pop(timers) end
  local timer = timers[1]
  if not timer then return nil end
  local left = timer.at - self.now()
  return left > 0 and left or 0
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
