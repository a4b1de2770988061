-- Watching many tasks at once: a few worker coroutines (at most max_concurrency requests in
-- flight) poll the tasks in order of when each is due, so ten thousand waiting tasks cost one small
-- table each, not a coroutine each. First polls are spread evenly over one interval so a thousand
-- tasks do not all ask in the same millisecond; each task's interval then grows while it is
-- unchanged. The first polls wait in a queue already in time order (read from the front); only
-- the later polls go through the heap: most tasks of a big group need just one or two reads, and a
-- queue costs nothing to keep in order where each heap pop walks its whole depth.
local errors = require "dh3.errors"
local validate = require "dh3.validate"
local scheduler = require "dh3.scheduler"
local heap_ = require "dh3.heap"
local push, pop = heap_.push, heap_.pop
local task_module = require "dh3.task"
local retry = require "dh3.retry"

local M = {}

local is_terminal = require("dh3.contract").is_terminal
local unwatch -- defined with watch, below

local Group = {}
Group.__index = Group

M.OPTIONS = {
  timeout = "number", interval = "number", max_interval = "number", max_concurrency = "number",
  on_update = "function", on_done = "function",
}
M.DEFAULTS = { timeout = 600, interval = 1, max_interval = 10, max_concurrency = 16 }
local GROWTH = 1.5

-- Runs a user's callback; an error in it goes to the client's error handler, not through the
-- worker (which must go on polling the other tasks).
function Group:_callback(fn, ...)
  self.sched:call(fn, ...)
end

function Group:_finish(e, err)
  if e.finished then return end
  e.finished = true
  self.remaining = self.remaining - 1
  if err then self.errs[e.index] = err end
  local done = self.done
  done[#done + 1] = e.index
  unwatch(e)
  if self.on_done then self:_callback(self.on_done, e.task, err) end
  self.sched:set_event(self.event)
  if self.remaining == 0 and self.worker_tokens then
    -- nothing left to watch: a worker asleep until its next poll ends now, not at that poll
    for _, token in ipairs(self.worker_tokens) do
      if token.timer then self.sched:wake(token) end
    end
  end
end

local function outcome(task)
  if task.state == "fail" then
    return errors.new("task_failed", task.error, { task_id = task.id })
  end
  return nil
end

-- Reacts to the task's state as it now stands (after a poll, or a webhook delivery): on_update on
-- a change, and the end when it is done. True when the task ended.
function Group:_observe(e)
  local task = e.task
  if e.finished then return true end
  if task.state ~= e.seen then
    e.seen, e.delay = task.state, (self:_interval(task))
    if self.on_update then self:_callback(self.on_update, task) end
  end
  if is_terminal[task.state] then
    self:_finish(e, outcome(task))
    return true
  end
  return false
end

-- A task whose result will be pushed to a callback is polled slowly: only a lost delivery needs it.
local CALLBACK_INTERVAL, CALLBACK_MAX_INTERVAL = 15, 60

-- The first and the longest interval between polls of `task`.
function Group:_interval(task)
  if task._callback and not self.explicit_interval then
    return math.max(self.interval, CALLBACK_INTERVAL), math.max(self.max_interval, CALLBACK_MAX_INTERVAL)
  end
  return self.interval, self.max_interval
end

-- News of the task came (a webhook delivery): settle it if it ended, or else read it soon through
-- a stand-in entry (the task's own entry stays where it is in the heap).
function Group:_news(e)
  if self:_observe(e) or e.urgent or e.polling then return end
  e.urgent = true
  push(self.heap, { at = self.sched.now(), stand_in_for = e })
  if self.worker_tokens then
    for _, token in ipairs(self.worker_tokens) do
      if token.timer then return self.sched:wake(token) end -- one sleeping worker takes it now
    end
  end
end

-- One status read of entry e by the worker holding `token`; e goes back into the heap unless it
-- ended (or `once`). A read that failed for a reason that may pass (see task:wait) is read again
-- after a back-off, until the deadline.
function Group:_poll(e, token, once)
  local task = e.task
  e.polling, token.entry = true, e
  local state, err = task:status(self.deadline, e)
  e.polling, token.entry = false, false
  if e.finished or self.stopped then return end -- cancelled meanwhile
  if not state then
    if err.kind == "timeout" and self.sched.now() >= self.deadline then
      err = errors.new("timeout", "the task did not finish in time; it is still valid", { task_id = task.id })
    else
      local again = err.retryable
      if again == nil then again = retry.read_retryable(err) end
      if again and self.sched.now() < self.deadline then
        e.failures, e.last_err = e.failures + 1, err
        if once then return end -- a stand-in's read: the task's own entry is still queued
        local longest = math.max(select(2, self:_interval(task)), err.retry_after or 0)
        local pause = retry.backoff(e.failures, self.interval, err.retry_after) or longest
        e.at = self.sched.now() + math.min(pause, longest)
        return push(self.heap, e)
      end
    end
    return self:_finish(e, err)
  end
  e.failures, e.last_err = 0, false
  if self:_observe(e) or once then return end
  e.at = self.sched.now() + e.delay
  e.delay = math.min(e.delay * GROWTH, select(2, self:_interval(task)))
  push(self.heap, e)
end

-- The entry due first, from the first-poll queue or the heap, or nil when both are empty.
function Group:_peek()
  local q, h = self.first[self.first_at], self.heap[1]
  if q and (not h or q.at <= h.at) then return q end
  return h
end

-- Takes out the entry _peek returned.
function Group:_take(e)
  local first = self.first
  if first[self.first_at] == e then
    first[self.first_at] = nil
    self.first_at = self.first_at + 1
  else
    pop(self.heap)
  end
end

-- Ends every entry still queued with the error `make(e)` returns.
function Group:_end_all(make)
  while true do
    local e = self:_peek()
    if not e then break end
    self:_take(e)
    if not e.stand_in_for then self:_finish(e, make(e)) end
  end
end

function Group:_expire()
  self:_end_all(function(e)
    local last = e.last_err
    return errors.new("timeout", ("the task did not finish within %gs; it is still valid: wait on it "
      .. "again later%s"):format(self.timeout,
      last and (" (its status could not be read: %s: %s)"):format(last.kind, last.message) or ""),
      { task_id = e.task.id })
  end)
end

local function closing_error(e)
  return errors.new("cancelled", "the client is closing; the task id is still valid", { task_id = e.task.id })
end

function Group:_worker(token)
  local sched = self.sched
  while not self.stopped do
    local e = self:_peek()
    if not e then break end
    local t = self.sched.now()
    if t >= self.deadline then
      self:_expire()
      break
    end
    if e.finished then
      self:_take(e)
    elseif sched.closing then
      self:_end_all(closing_error)
      break
    elseif e.at > t then
      token.woken = false
      sched:sleep(math.min(e.at, self.deadline) - t, token)
    else
      self:_take(e)
      local real = e.stand_in_for
      if not real then
        self:_poll(e, token)
      else
        real.urgent = nil
        if not (real.finished or real.polling) then self:_poll(real, token, true) end
      end
    end
  end
end

-- An entry is its task's operation (see Task:_op): a cancel of the task or news of it reaches
-- the entry through these two functions, shared by every entry.
local function on_cancel(e)
  e.group:_finish(e, errors.cancelled(e.task.id))
end

local function on_wake(e)
  e.group:_news(e)
end

-- The entry is no longer one of its task's operations.
unwatch = function(e)
  if e.task then e.task:_end_op(e) end -- stand-ins have no task
end

--- Starts watching `tasks` (each created, i.e. with an id). Callbacks fire from the client's
-- loop (update(), run(), or any blocking call). Returns the group.
function M.watch(client, tasks, opts, level)
  opts = opts or {}
  validate.check_table("watch", opts, M.OPTIONS, level + 1)
  validate.check_numbers("watch", opts, validate.WAIT_RULES, level + 1)
  if type(tasks) ~= "table" then
    error(("bad argument #1 (array of tasks expected, got %s)"):format(type(tasks)), level)
  end
  local sched = client:_scheduler()
  local interval = opts.interval or M.DEFAULTS.interval
  local max_concurrency = opts.max_concurrency or M.DEFAULTS.max_concurrency
  local timeout = opts.timeout or M.DEFAULTS.timeout
  local self = setmetatable({
    client = client, sched = sched, tasks = tasks, done = {}, taken = 0, errs = {},
    first = {}, first_at = 1, first_n = 0, -- the first polls, in time order: first[first_at..first_n]
    heap = {},                -- the later polls and the stand-ins of _news, a heap by time
    remaining = #tasks, event = scheduler.event(),
    timeout = timeout, deadline = sched.now() + timeout,
    interval = interval, max_interval = math.max(interval, opts.max_interval or M.DEFAULTS.max_interval),
    explicit_interval = opts.interval ~= nil,
    on_update = opts.on_update, on_done = opts.on_done,
  }, Group)
  local t0, n, first = sched.now(), #tasks, self.first
  for i, task in ipairs(tasks) do
    if not task_module.is_task(task) or task.client ~= client then
      error(("watch: item %d is not a task of this client"):format(i), level)
    end
    if not task.id then error(("watch: task %d has not been created"):format(i), level) end
    local delay = (self:_interval(task))
    -- Every field an entry will hold, so that none is added (and the table grown) later. The
    -- first polls fall at the middles of n equal slices of the interval: in order, evenly
    -- spread, and a lone task is first read half an interval after the watch starts.
    -- The fields after `group` make the entry an operation of its task (scheduler.cancel, wake).
    local e = { task = task, index = i, delay = delay, seen = task.state, at = t0 + delay * (i - 0.5) / n,
      polling = false, finished = false, group = self, failures = 0, last_err = false,
      req = nil, co = nil, timer = nil, cancelled = false, woken = false, on_cancel = on_cancel, on_wake = on_wake }
    if task:done() then
      self:_finish(e, outcome(task))
    else
      task:_op(e)
      self.first_n = self.first_n + 1
      first[self.first_n] = e
    end
  end
  -- in time order already when every task has the same first interval; a mix (some with a
  -- callback, polled slowly) is sorted once
  for i = 2, self.first_n do
    if first[i].at < first[i - 1].at then
      table.sort(first, function(a, b) return a.at < b.at end)
      break
    end
  end
  self.worker_tokens = {}
  for i = 1, math.min(max_concurrency, self.first_n) do
    self.worker_tokens[i] = {}
    sched:spawn(Group._worker, self, self.worker_tokens[i])
  end
  return self
end

--- Waits until every task has ended (or failed to be read), or the group is stopped. Returns
-- tasks, errs: errs[i] is the error of tasks[i] when it did not succeed.
function Group:wait()
  while self.remaining > 0 and not self.stopped do
    self.event.set = false
    self.sched:wait_event(self.event)
  end
  return self.tasks, self.errs
end

--- The next task to end, in the order they end: task, err (err when it did not succeed);
-- nil when every task has been returned.
function Group:next()
  while self.taken >= #self.done do
    if self.remaining == 0 or self.stopped then return nil end
    self.event.set = false
    self.sched:wait_event(self.event)
  end
  self.taken = self.taken + 1
  local i = self.done[self.taken]
  return self.tasks[i], self.errs[i]
end

--- Stops watching: polls in flight are cancelled and the workers end (the tasks themselves go on).
function Group:stop()
  if self.stopped then return end
  self.stopped = true
  for i = self.first_at, self.first_n do unwatch(self.first[i]) end
  for _, e in ipairs(self.heap) do unwatch(e) end
  for _, token in ipairs(self.worker_tokens) do
    local e = token.entry
    if e then -- its status read is in flight: cancel it
      unwatch(e)
      e.on_cancel = nil -- stopped, not cancelled: the entry does not end with an error
      self.sched:cancel(e)
    end
    if token.timer then self.sched:cancel(token) end -- wake the sleeping workers so they end now
  end
end

--- Tasks still being watched.
function Group:pending()
  return self.remaining
end

return M
