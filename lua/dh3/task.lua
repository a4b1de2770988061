-- One generation task: created once, then read, waited on and downloaded.
local contract = require "dh3.contract"
local errors = require "dh3.errors"
local compat = require "dh3.compat"
local validate = require "dh3.validate"
local download = require "dh3.download"
local output = require "dh3.output"
local scheduler_cancelled = require("dh3.scheduler").CANCELLED

local M = {}

local GET_PATH, is_terminal, read_output = contract.GET_PATH, contract.is_terminal, output.read

local Task = {}
Task.__index = Task
Task.__name = "dh3.task"

function Task:__tostring()
  return ("dh3.task(%s, %s)"):format(self.id or "not created", tostring(self.state))
end

function M.is_task(v)
  return getmetatable(v) == Task
end

--- A task of `client` from an input table (not yet created) or an existing task id.
-- `level` is error()'s level for the caller's mistakes, as seen from here.
function M.new(client, input, level)
  -- The nil fields size the table for what a task holds once read (a constructor reserves a
  -- slot for every field it names): polling thousands of tasks then grows none of them.
  local self = setmetatable({ client = client, id = nil, state = nil, images = nil, error = nil,
    _ops = nil, _callback = nil }, Task)
  if type(input) == "string" then
    if not validate.task_id(input) then
      error(("client:task: '%s' is not a task id"):format(errors.sanitize(input, 80)), level)
    end
    self.id, self.state = input, "unknown"
    client._tasks[input] = self
  elseif type(input) == "table" then
    self.state = "new"
    self._body, self._invalid = validate.task_input(input, level + 1)
  else
    error(("bad argument #1 to 'task' (table or string expected, got %s)"):format(type(input)), level)
  end
  return self
end

--- Submits the task. Returns the task (with .id set), or nil, err.
-- A task is created at most once: a second create raises, and so does a create after one whose
-- answer was lost (err.maybe_created): that task may exist and be paid for, and creating it again
-- could pay twice. Make a new task to try again on purpose.
function Task:create()
  if self.id or self._creating or self._maybe_created then
    error(("task:create: this task was already created (%s)"):format(self.id or self._creating and "in progress"
      or "its answer was lost: it may exist and be charged; make a new task to create another"), 2)
  end
  if self._invalid then return nil, self._invalid end
  local listener = self.client._listener
  if listener and listener.attach and not self._body.callback_url then
    self._body.callback_url = listener.url
  end
  self._callback = self._body.callback_url ~= nil
  self._creating = true
  local doc, err = self.client:_api("POST", contract.CREATE_PATH, self._body, self)
  self._creating = nil
  local journal, local_id = self.client._journal, self._local_id
  if not doc then
    if err.maybe_created then
      self._maybe_created = true
    elseif journal and local_id then
      journal:abandoned(local_id, err)
    end
    return nil, err
  end
  local id = doc.task_id
  if not validate.task_id(id) then
    self._maybe_created = true
    return nil, errors.new("protocol", ("the answer to create has no usable task_id (got %s); "
      .. "the task may have been created and charged"):format(errors.sanitize(tostring(id), 140)),
      { maybe_created = true })
  end
  self.id, self.state = id, "queuing"
  self.client._tasks[id] = self
  if journal then
    local ok, jerr = journal:created(local_id, id)
    if not ok then -- the id is in hand and returned all the same; say loudly that it is not on disk
      io.stderr:write("dh3: task ", id, " was created but could not be journaled: ", tostring(jerr), "\n")
    end
  end
  -- a delivery may have come before this answer: the receiver kept it for us
  if listener and not listener.closed then listener:claim(id) end
  return self
end

-- Called by the client right before the create request leaves (after pacing): with a journal,
-- the intent goes on the disk first (once per task, whatever the retries), so a crash from here
-- on leaves a trace of what may be paid for, and one before it (while waiting for a slot) leaves
-- none, since nothing was sent. true, or nil, err (then the create must not be sent).
function Task:_before_send()
  local journal = self.client._journal
  if not journal or self._local_id then return true end
  local local_id, jerr = journal:intent(self._body)
  if not local_id then return nil, jerr end
  self._local_id = local_id
  return true
end

-- With a journal: records that this task's images are to be saved, so that it stays pending
-- (dh3 resume downloads it) until they are, even if it ends meanwhile. task:download does it
-- itself; the command line calls it as soon as the task exists, for it knows it will download.
function Task:_expect_download()
  local journal = self.client._journal
  if not journal or not self.id then return true end
  return journal:saving(self.id)
end

-- {======================================================================
-- Operations: each call that does work for the task (a status read, a download or read of its
-- images, a watch of it) is one operation object, through which task:cancel() and news of the
-- task (a webhook delivery) reach that call alone. The scheduler keeps on it what the call waits
-- on (req, co, timer, waiter) and the flags cancelled and woken; on_cancel and on_wake, when set,
-- run on a cancel or on news. The task holds the set of its live operations.
-- ======================================================================

--- Starts an operation of this task: `op` (a watch entry, which is its own operation) or a new
-- one. Returns it; Task:_end_op ends it.
function Task:_op(op)
  if not op then
    op = { req = nil, co = nil, timer = nil, waiter = nil, cancelled = false, woken = false }
  end
  local ops = self._ops
  if not ops then
    ops = {}
    self._ops = ops
  end
  ops[op] = true
  return op
end

function Task:_end_op(op)
  local ops = self._ops
  if ops then ops[op] = nil end
end

-- The live operations, as a list (what cancelling or waking one does may start or end others).
local function live_ops(self)
  local list, n = {}, 0
  for op in pairs(self._ops) do
    n = n + 1
    list[n] = op
  end
  return list
end

--- Stops every wait, poll and transfer in progress for this task: they return nil and an error of
-- kind "cancelled". The task itself is untouched: its id stays valid to wait on later.
-- A create in flight is not interrupted (its answer carries the id: it must not be lost).
function Task:cancel()
  if not self._ops then return end
  local sched = self.client:_scheduler()
  for _, op in ipairs(live_ops(self)) do sched:cancel(op) end
end

-- News of the task came (a webhook delivery): every operation waiting on it hears of it.
function Task:_wake()
  if not self._ops then return end
  local sched = self.client._sched
  for _, op in ipairs(live_ops(self)) do sched:wake(op) end
end
-- }======================================================================

-- Applies a task's reported state to self; records a terminal state in the journal the first
-- time it is seen.
function Task:_apply(state, images, err)
  local was_done = is_terminal[self.state]
  self.state, self.images, self.error = state, images, err
  local journal = self.client._journal
  if journal and not was_done and is_terminal[self.state] then journal:finished(self.id, self.state, self.images) end
end

function Task:_check_created(what)
  if not self.id then error(("task:%s: the task has not been created yet"):format(what), 3) end
end

--- One status read. Returns the state, or nil, err. (`deadline` and `op`, the operation it is
-- part of, are the poller's.)
function Task:status(deadline, op)
  local id = self.id
  if not id then self:_check_created("status") end
  local own = not op
  if own then op = self:_op() end
  local doc, err = self.client:_api("GET", GET_PATH, nil, self, deadline, op)
  if own then self:_end_op(op) end
  if not doc then return nil, err end
  local state, task_id, images, error_message = read_output(doc.nano_banana_pro_output)
  if not state then -- task_id is then what is wrong
    return nil, errors.new("protocol", "status answer: " .. task_id, { task_id = id })
  end
  if task_id ~= nil and task_id ~= id then
    return nil, errors.new("protocol", "status answer: the answer is about another task", { task_id = id })
  end
  self:_apply(state, images, error_message)
  return state
end

function Task:done()
  return is_terminal[self.state] == true
end

local WAIT_OPTIONS = { timeout = "number", interval = "number", max_interval = "number", on_update = "function" }

--- Polls until the task ends. Returns the task on success; nil, err on fail ("task_failed") or
-- when `timeout` passes ("timeout": the task is still valid and can be waited on again). It is a
-- watch of this one task (dh3.poller): the same intervals, retries and deadlines as wait_all.
function Task:wait(opts)
  opts = opts or {}
  validate.check_table("task:wait", opts, WAIT_OPTIONS, 3)
  validate.check_numbers("task:wait", opts, validate.WAIT_RULES, 3)
  self:_check_created("wait")
  local group = require("dh3.poller").watch(self.client, { self }, opts, 3)
  local _, err = group:next()
  if err then return nil, err end
  return self
end

local DOWNLOAD_OPTIONS = { timeout = "number", progress = "function" }
local DOWNLOAD_RULES = { timeout = "seconds" }

function Task:_check_images(what)
  if self.state ~= "success" or not self.images then
    return nil, errors.new("invalid_request", ("the task has no images to %s (state %s)"):format(what, self.state),
      { task_id = self.id })
  end
  return true
end

--- Saves the task's images under `dest` (a folder, or a file path). Returns the array of paths,
-- or nil, err. Each file is written beside its destination and renamed into place when complete
-- and of the announced size; a failed download leaves the destination untouched.
function Task:download(dest, opts)
  if type(dest) ~= "string" or dest == "" then
    error(("bad argument #1 to 'download' (path expected, got %s)"):format(type(dest)), 2)
  end
  opts = opts or {}
  validate.check_table("task:download", opts, DOWNLOAD_OPTIONS, 3)
  validate.check_numbers("task:download", opts, DOWNLOAD_RULES, 3)
  local ok, err = self:_check_images("download")
  if not ok then return nil, err end
  local journal = self.client._journal
  if journal then
    -- pending until saved: a crash in the middle of the download leaves the task to dh3 resume
    ok, err = journal:saving(self.id)
    if not ok then return nil, err end
  end
  local planned, perr = download.plan(self.id, self.images, dest)
  if perr then return nil, perr end
  local paths, ferr = self:_fetch(planned, opts)
  if paths and journal then
    ok, err = journal:saved(self.id, paths)
    if not ok then -- the images are saved and returned all the same; say that the journal lags
      io.stderr:write("dh3: the images of task ", self.id, " were saved but could not be journaled: ",
        tostring(err), "\n")
    end
  end
  return paths, ferr
end

--- The bytes of image `i` (default 1), in memory: for programs that keep images in memory, such
-- as engines loading textures. Returns the bytes, or nil, err.
function Task:read(i, opts)
  i = i or 1
  if not compat.is_integer(i) then
    -- a number that is not an integer is a float (below Lua 5.3: one with a fraction, or past 2^53)
    local got = type(i) == "number" and "float" or type(i)
    error(("bad argument #1 to 'read' (integer expected, got %s)"):format(got), 2)
  end
  opts = opts or {}
  validate.check_table("task:read", opts, DOWNLOAD_OPTIONS, 3)
  validate.check_numbers("task:read", opts, DOWNLOAD_RULES, 3)
  local ok, err = self:_check_images("read")
  if not ok then return nil, err end
  if not self.images[i] then
    return nil, errors.new("invalid_request", ("the task has no image %d"):format(i), { task_id = self.id })
  end
  local results, ferr = self:_fetch({ false }, opts, i)
  if not results then return nil, ferr end
  return results[1]
end

-- Fetches images concurrently: into the files `paths[k]`, or into memory where paths[k] is false
-- (then only image `only`). Returns the array of paths (or bodies), or nil, err.
-- Each download in flight holds one of the client's download slots (client.MAX_DOWNLOADS): the
-- first is waited for; more are taken only while free, and a finished image hands its slot to
-- the next one, so no call ever waits for a slot while holding one (two calls could then wait
-- for each other forever).
local function fetch(self, op, paths, opts, only)
  local client = self.client
  local sched = client:_scheduler()
  local images = only and { self.images[only] } or self.images
  local n = #images
  local requests, got, total = {}, {}, {}
  for k = 1, n do got[k], total[k] = 0, images[k].file_size end
  local next_k, held = 1, 0

  -- an early end: what is still in flight is cancelled, what already came is thrown away, and
  -- every slot given back
  local function abandon(err)
    for k = 1, next_k - 1 do
      local req = requests[k]
      if req then sched:drop(req) end
    end
    for _ = 1, held do client:_download_done() end
    return nil, err
  end

  -- starts image next_k on a slot already held
  local function start_next()
    local k = next_k
    next_k = k + 1
    local req, rerr, why = client:_download(images[k], paths[k] or nil, opts.timeout)
    if not req then
      return nil, errors.new(why == "io" and "io" or "invalid_request", errors.sanitize(rerr, 300),
        { task_id = self.id })
    end
    requests[k] = req
    if opts.progress then
      sched:watch_progress(req, function(bytes)
        got[k] = bytes
        local sum_got, sum_total = 0, 0
        for j = 1, n do sum_got, sum_total = sum_got + got[j], sum_total + total[j] end
        opts.progress(self, sum_got, sum_total)
      end)
    end
    return true
  end

  local ok, err = client:_download_slot(op, self.id)
  if not ok then return nil, err end
  held = 1
  ok, err = start_next()
  if not ok then return abandon(err) end
  while next_k <= n and sched:try_acquire(client._downloads) do
    held = held + 1
    ok, err = start_next()
    if not ok then return abandon(err) end
  end

  local results, first_err = {}, nil
  for k = 1, n do
    local req = requests[k] -- started: each image awaited hands its slot to the next one
    local res = sched:await(req, op)
    sched:watch_progress(req, nil)
    requests[k] = nil
    if res == scheduler_cancelled then return abandon(errors.cancelled(self.id)) end
    local out, ferr = download.outcome(res, images[k], self.id)
    if out then results[#results + 1] = out elseif not first_err then first_err = ferr end
    if next_k <= n then
      ok, err = start_next()
      if not ok then return abandon(err) end
    else
      held = held - 1
      client:_download_done()
    end
  end
  if first_err then
    first_err.paths = results -- what was saved before the failure stays, complete
    return nil, first_err
  end
  return results
end

function Task:_fetch(paths, opts, only)
  local op = self:_op()
  local results, err = fetch(self, op, paths, opts, only)
  self:_end_op(op)
  return results, err
end

return M
