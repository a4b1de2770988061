-- A client: the API key, the options, one C engine with its scheduler, and the exchange with the
-- service (retries, pacing, hooks). Tasks call back into `_api` and `_download`.
local core = require "dh3.core"
local contract = require "dh3.contract"
local errors = require "dh3.errors"
local retry = require "dh3.retry"
local ratelimit = require "dh3.ratelimit"
local scheduler = require "dh3.scheduler"
local validate = require "dh3.validate"
local task_module = require "dh3.task"
local poller = require "dh3.poller"
local compat = require "dh3.compat"

local M = {}

local min = math.min
local from_response, CANCELLED = errors.from_response, scheduler.CANCELLED

local Client = {}
Client.__index = Client
Client.__name = "dh3.client"

M.DEFAULT_BASE_URL = "https://api.dh3.app"

-- The headers of each client's API requests (the key among them), kept out of the client table
-- so that nothing that prints or serialises a client (a debugger, a table dump) can show the key.
-- The table is made once and never changed: the C core keeps the header list it builds from it.
local headers_of = setmetatable({}, { __mode = "k" })
-- The base URL as given, which may hold a user name and password: client.base_url shows it
-- with those redacted.
local base_url_of = setmetatable({}, { __mode = "k" })

local OPTIONS = {
  api_key = "string", base_url = "string", timeout = "number", connect_timeout = "number",
  max_retries = "number", retry_delay = "number", create_qps = { "number", "boolean" },
  ca_file = "string", proxy = "string", user_agent = "string", on_request = "function",
  journal = "string", loop = "string",
}

local DEFAULTS = { timeout = 60, connect_timeout = 10, max_retries = 3, retry_delay = 0.5 }

-- The values each number option takes (validate.check_numbers): all checked here, so that no
-- option is refused later, by the C core, in the middle of a create.
local NUMBER_RULES = { timeout = "seconds", connect_timeout = "seconds", retry_delay = "seconds",
  max_retries = "count" }

-- Downloads of big images get at least this long, whatever the API timeout.
local MIN_DOWNLOAD_TIMEOUT = 300

-- Downloads in flight at once, per client: each holds an open file (and a connection to the
-- image host), so a resume of thousands of tasks must not open them all together.
M.MAX_DOWNLOADS = 8

-- A string option that goes into a header, a path or a URL: no NUL (C would cut it short) and,
-- for a header, no control characters (a CR LF would add headers of the caller's making).
local function check_text(name, v, header)
  if v == nil then return end
  if v == "" or v:find("%z") or header and v:find("%c") then
    error(("dh3.new: %s must be a non-empty string without %s"):format(name,
      header and "control characters" or "NUL bytes"), 3)
  end
end

--- dh3.new: a client, or nil, err when no usable key or base URL is given.
-- `stand_in` is for specs only: {engine = ..., now = ...} replaces the C engine and the clock,
-- so that the logic above the engine runs on a clock the spec drives (spec/helpers/fake_engine).
function M.new(opts, version, stand_in)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'new' (table expected, got %s)"):format(type(opts)), 2)
  end
  validate.check_table("dh3.new", opts, OPTIONS, 3)
  validate.check_numbers("dh3.new", opts, NUMBER_RULES, 3)
  check_text("user_agent", opts.user_agent, true)
  check_text("ca_file", opts.ca_file)
  check_text("proxy", opts.proxy, true)
  check_text("journal", opts.journal)
  local qps = opts.create_qps
  if qps == nil or qps == true then qps = contract.CREATE_QPS end
  if qps ~= false and (not compat.is_integer(qps) or qps < 1) then
    error("dh3.new: create_qps must be a whole number >= 1, or false", 2)
  end

  local key = opts.api_key or os.getenv("DH3_API_KEY")
  if key == nil or key == "" then
    return nil, errors.new("auth", "no API key: pass api_key or set DH3_API_KEY")
  end
  if key:find("[%c%s]") then
    return nil, errors.new("auth", "the API key contains a space or a control character")
  end
  local base_url = opts.base_url or os.getenv("DH3_BASE_URL") or M.DEFAULT_BASE_URL
  if not contract.is_http_url(base_url) or base_url:find("[?#]") then
    return nil, errors.new("invalid_request", "base_url must be an http(s) URL without query: "
      .. errors.sanitize(base_url, 100))
  end

  if opts.loop ~= nil and opts.loop ~= "host" then
    error('dh3.new: loop must be "host" (or left out)', 2)
  end

  local journal
  if opts.journal then
    local jerr
    journal, jerr = require("dh3.journal").open(opts.journal)
    if not journal then return nil, jerr end
  end

  local engine = stand_in and stand_in.engine or core.engine{
    -- "libcurl/7.88.1" only: curl_version() goes on to list every library libcurl was built
    -- with (200 bytes more in every request, and more than a server needs to know)
    user_agent = opts.user_agent or ("dh3-lua/" .. version .. " " .. core.curl_version:match("^%S+")),
    ca_file = opts.ca_file, proxy = opts.proxy,
    -- loop = "host": libcurl's socket-action mode from the start (see Client:use_host_loop)
    socket_action = opts.loop == "host" or nil,
  }
  base_url = base_url:gsub("/+$", "")
  local self = setmetatable({
    -- for display: a password in the URL is as secret as the key (the real URL is in base_url_of)
    base_url = validate.redact_url(base_url),
    timeout = opts.timeout or DEFAULTS.timeout,
    connect_timeout = opts.connect_timeout or DEFAULTS.connect_timeout,
    max_retries = opts.max_retries or DEFAULTS.max_retries,
    retry_delay = opts.retry_delay or DEFAULTS.retry_delay,
    on_request = opts.on_request,
    _engine = engine,
    _sched = scheduler.new(engine, stand_in and stand_in.now),
    _pacer = nil, -- set below: it waits through the scheduler
    _journal = journal,
    _tasks = setmetatable({}, { __mode = "v" }), -- [task id] = task, for webhook deliveries
    _creates = {}, -- [request] = true for each create in flight: close() lets them finish
    _closing = false,
  }, Client)
  self._downloads = self._sched:semaphore(M.MAX_DOWNLOADS)
  if qps then self._pacer = ratelimit.new(qps, self._sched) end
  -- built once; the key lives only here and in the engine's outgoing requests
  headers_of[self] = { "Authorization: Bearer " .. key, "Content-Type: application/json", "Accept: application/json" }
  base_url_of[self] = base_url
  return self
end

function Client:__tostring()
  return ("dh3.client(%s%s)"):format(self.base_url, self._closed and ", closed" or "")
end

function Client:_scheduler()
  if self._closed then error("dh3: the client is closed", 3) end
  return self._sched
end

-- The error of work refused because the client is closing (nothing of it was sent).
local function closing_error(task_id, what)
  return errors.new("cancelled", ("the client is closing: %s"):format(what), { task_id = task_id })
end

--- One API call about `task`, with its retries: the create (POST contract.CREATE_PATH, `body`
-- the input), which follows the non-idempotent create rules and is never cut short, or a read
-- (GET contract.GET_PATH; the task's id goes in the URL's query, not in `path`, which the
-- on_request hook sees), which cancelling the operation `op` stops (see Task:_op). `deadline`
-- (on sched.now), optional, bounds the whole call. Returns the decoded answer (body code 200),
-- or nil, err.
function Client:_api(method, path, body, task, deadline, op)
  local sched = self:_scheduler()
  local is_create = path == contract.CREATE_PATH
  local task_id, token = task.id, not is_create and op or nil
  local headers, base = headers_of[self], base_url_of[self]
  local url = is_create and base .. path or base .. path .. "?task_id=" .. task_id
  local json
  if body then json = assert(core.json_encode(body)) end
  local attempt = 0
  while true do
    attempt = attempt + 1
    if self._closing then
      return nil, closing_error(task_id, is_create and "the create was not sent, nothing was created"
        or "the request was not sent")
    end
    local timeout = self.timeout
    if deadline then
      timeout = min(timeout, deadline - sched.now())
      if timeout <= 0 then
        return nil, errors.new("timeout", "no time left for the request", { task_id = task_id })
      end
    end
    local slot
    if is_create then
      if self._pacer then
        slot = self._pacer:acquire()
        if not slot then return nil, closing_error(nil, "the create was not sent, nothing was created") end
      end
      -- The intent goes on disk once the create is about to leave (after pacing: a crash while
      -- it waited for a slot sent nothing), and before it can leave.
      local ok, jerr = task:_before_send()
      if not ok then
        if slot then self._pacer:release(slot) end
        return nil, jerr
      end
    end
    local req, rerr = sched:request{
      method = method, url = url, headers = headers, body = json, timeout = timeout,
      connect_timeout = min(self.connect_timeout, timeout), context = sched:context(),
    }
    if not req then
      if slot then self._pacer:release(slot) end
      return nil, errors.new("invalid_request", errors.sanitize(rerr, 200), { task_id = task_id })
    end
    if is_create then self._creates[req] = true end
    local res = sched:await(req, token)
    if is_create then self._creates[req] = nil end
    if slot then self._pacer:release(slot) end
    if res == CANCELLED then return nil, errors.cancelled(task_id) end
    local doc, err = from_response(res)
    if self.on_request then
      sched:call(self.on_request, {
        method = method, path = path, status = res.status, attempt = attempt, seconds = res.time,
        error = err and err.kind or nil,
        -- a create's answer names the task it made: the hook learns its id as the caller does
        task_id = task_id or (doc and validate.task_id(doc.task_id) and doc.task_id) or nil,
      })
    end
    if doc then return doc end

    local retryable, maybe_created
    if is_create then
      retryable, maybe_created = retry.create_retryable(err, res)
    else
      retryable = retry.read_retryable(err)
    end
    err.task_id, err.retryable = task_id, retryable
    if maybe_created then
      err.maybe_created = true
      err.message = err.message .. "; the task may have been created (and charged) but its id is unknown"
    end
    if not retryable or attempt > self.max_retries then return nil, err end
    local delay = retry.backoff(attempt, self.retry_delay, err.retry_after)
    if not delay or deadline and sched.now() + delay >= deadline then return nil, err end
    sched:sleep(delay, token)
    if token and token.cancelled then return nil, errors.cancelled(task_id) end
  end
end

-- A slot for one download (M.MAX_DOWNLOADS per client), taken in order of asking; `token` can
-- cancel the wait. True, or nil, err.
function Client:_download_slot(token, task_id)
  if self._closing then return nil, closing_error(task_id, "the download was not started") end
  if self._sched:acquire(self._downloads, token) then return true end
  if self._closing then return nil, closing_error(task_id, "the download was not started") end
  return nil, errors.cancelled(task_id)
end

function Client:_download_done()
  self._sched:release(self._downloads)
end

--- Starts the download of one image, into the file `path` or, without a path, into memory;
-- returns the request, or nil, message.
-- No Authorization header: the image host is a third party and must never see the key.
function Client:_download(image, path, timeout)
  local sched = self:_scheduler()
  return sched:request{
    context = sched:context(),
    method = "GET", url = image.url, download_to = path, expect_size = image.file_size,
    max_body = not path and math.max(1, image.file_size) or nil,
    follow_redirects = true, connect_timeout = self.connect_timeout,
    timeout = timeout or math.max(self.timeout, MIN_DOWNLOAD_TIMEOUT),
  }
end

--- A task: from an input table (created later by task:create) or an existing id (no request made).
function Client:task(input)
  self:_scheduler()
  local t = task_module.new(self, input, 3)
  return t
end

--- A task created in one call: the task, or nil, err.
function Client:create(input)
  self:_scheduler()
  if type(input) ~= "table" then
    error(("bad argument #1 to 'create' (table expected, got %s)"):format(type(input)), 2)
  end
  local t = task_module.new(self, input, 3)
  return t:create()
end

--- Starts polling `tasks` in the background, callbacks style: opts.on_update(task) on each change
-- of state and opts.on_done(task, err) when one ends, fired from update()/run() (or any blocking
-- dh3 call). opts: timeout, interval, max_interval, max_concurrency (requests in flight, 16).
-- Returns the group: group:wait(), group:next(), group:stop(), group:pending().
function Client:watch(tasks, opts)
  return (poller.watch(self, tasks, opts, 3))
end

--- Waits for every task, polling them over at most max_concurrency concurrent requests.
-- Returns tasks, errs (errs[i]: the error of tasks[i] when it did not succeed).
function Client:wait_all(tasks, opts)
  local group = poller.watch(self, tasks, opts, 3)
  return group:wait()
end

--- Iterates over tasks as they end: for task, err in client:as_completed(tasks, opts) do ... end
-- Plain Lua 5.1 cannot yield from an iterator called by a generic for: there, inside a spawned
-- coroutine, it raises at once (rather than at the first wait, with a message about C-call
-- boundaries); the loop that works everywhere is `local group = client:watch(tasks)` and
-- `while true do local t, err = group:next() if not t then break end ... end`.
function Client:as_completed(tasks, opts)
  if not compat.ITERATOR_CAN_YIELD and self:_scheduler():context() then
    error("client:as_completed: on Lua 5.1 a for loop cannot wait inside a spawned coroutine; "
      .. "use local group = client:watch(tasks) and call group:next() until it returns nil", 2)
  end
  local group = poller.watch(self, tasks, opts, 3)
  return function() return group:next() end
end

--- The first of `tasks` to end: task, err; nil when `tasks` is empty. The others are left as they are.
function Client:wait_any(tasks, opts)
  local group = poller.watch(self, tasks, opts, 3)
  local t, err = group:next()
  group:stop()
  return t, err
end

--- Runs fn(...) in a coroutine; inside it, every dh3 call yields instead of blocking.
function Client:spawn(fn, ...)
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'spawn' (function expected, got %s)"):format(type(fn)), 2)
  end
  return self:_scheduler():spawn(fn, ...)
end

--- Waits `seconds`: yields inside a spawned coroutine, else blocks while driving the engine (so
-- everything in flight keeps moving). For timers of the caller's own, e.g. redrawing a display.
function Client:sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds then
    error(("bad argument #1 to 'sleep' (number expected, got %s)"):format(type(seconds)), 2)
  end
  self:_scheduler():sleep(math.max(0, seconds))
end

--- Advances all transfers, timers and coroutines without waiting; returns the number pending.
function Client:update()
  return self:_scheduler():update()
end

--- Blocks until nothing is pending.
function Client:run()
  return self:_scheduler():run()
end

--- Your own event loop (see README, "Your own event loop"): the client's engine switches to
-- libcurl's socket-action mode (a client made with loop = "host" starts in it). Nothing may be
-- in flight. update(), run() and blocking calls keep working in that mode.
function Client:use_host_loop()
  local engine = self:_scheduler().engine
  if not engine:socket_mode() then engine:use_socket_action() end
end

--- The descriptors whose wanted events changed since the last call (every watched one with
-- `all`), into the table `t`: t[1], t[2] = fd, events ... up to t[2n]; events is "r", "w", "rw",
-- or "" when the descriptor is no longer to be watched. Returns n. Allocates nothing when
-- nothing changed. A closed client reports nothing.
function Client:watched(t, all)
  if type(t) ~= "table" then
    error(("bad argument #1 to 'watched' (table expected, got %s)"):format(type(t)), 2)
  end
  if self._closed then return 0 end
  local sched = self._sched
  local n = sched.engine:watched(t, all)
  local k, count = 2 * n, n
  -- the descriptors of the client's own I/O (a webhook receiver's sockets), watched for reading:
  -- [fd] = the mark of the last call that saw it (two marks take turns, so that the ones gone
  -- are found without making a table)
  local seen = self._host_fds
  if not seen then
    if not sched.sources[1] then return n end
    seen = {}
    self._host_fds = seen
  end
  local mark = not self._host_mark
  self._host_mark = mark
  for _, src in ipairs(sched.sources) do
    local set = src:wait_set()
    for i = 1, #set do
      local fd = set[i]
      if seen[fd] == nil or all then
        t[k + 1], t[k + 2] = fd, "r"
        k, count = k + 2, count + 1
      end
      seen[fd] = mark
    end
  end
  for fd, m in pairs(seen) do
    if m ~= mark then
      seen[fd] = nil -- clearing a field during the traversal is allowed
      -- closed, its number may already be libcurl's again: then libcurl's entry above stands
      local reused = false
      for i = 1, 2 * n, 2 do
        if t[i] == fd then reused = true end
      end
      if not reused then
        t[k + 1], t[k + 2] = fd, ""
        k, count = k + 2, count + 1
      end
    end
  end
  if count > n then t[k + 1] = nil end
  return count
end

--- Seconds until the client must be called (client:socket_action() with no descriptor): for
-- libcurl's timer, the client's own timers (a sleeping coroutine, a back-off, pacing), or 0 when
-- a coroutine is ready to run. nil: nothing to wake up for.
function Client:next_timeout()
  if self._closed then return nil end
  local sched = self._sched
  local t, own = sched.engine:timeout(), sched:next_wake()
  if own and (t == nil or own < t) then t = own end
  for _, src in ipairs(sched.sources) do -- a webhook receiver's deadlines (idle connections)
    local _, limit = src:wait_set()
    if limit and (t == nil or limit < t) then t = limit end
  end
  return t
end

--- Acts on a ready descriptor (fd, events: "r", "w", "rw", "e" for an error) or, with no fd, on
-- the timer; then completions, coroutines and timers run as in update(). Returns what update()
-- returns: the number of things pending.
function Client:socket_action(fd, events)
  local sched = self:_scheduler()
  -- a webhook receiver's descriptor is served by update() itself
  if fd ~= nil and not (self._host_fds and self._host_fds[fd]) then
    sched.engine:socket_action(fd, events)
  end
  return sched:update()
end

--- True once the client is closed (a host loop's driver then lets go of it).
function Client:is_closed()
  return self._closed == true
end

--- Sets the function that receives errors raised in spawned coroutines: handler(err, co).
function Client:on_error(handler)
  if type(handler) ~= "function" then
    error(("bad argument #1 to 'on_error' (function expected, got %s)"):format(type(handler)), 2)
  end
  self:_scheduler().on_error = handler
end

--- Starts a webhook receiver on this client's own engine (served by update()/run() and every
-- blocking call, like everything else): it answers 200 at once and resolves the matching task, so
-- its wait returns and its callbacks fire. Only POST to its path is accepted; by default the path
-- ends in an unguessable secret segment, and creates get its URL as callback_url automatically.
-- opts: host ("127.0.0.1"), port (0: a free one), path ("/dh3/callback"), secret (true: a random
-- one; a string: that one, to keep the URL across restarts; false: none, deliveries are hints),
-- public_url (what the service must call, when it differs), max_body (64 KiB), attach (true),
-- store (the de-duplicator's store: an object with add(key) -> true when new), max_connections
-- (64: past it, the connection idle longest is closed), idle_timeout (10 s to send a request).
-- Returns the listener (listener.url, listener:port(), listener.counts, listener:close()).
function Client:listen(opts)
  local sched = self:_scheduler()
  if self._listener then error("client:listen: this client already listens", 2) end
  local listener, err = require("dh3.webhook").listen(self, opts, 3)
  if not listener then return nil, err end
  self._listener = listener
  sched:add_source(listener)
  return listener
end

function Client:_unlisten(listener)
  if self._listener == listener then self._listener = nil end
  self._sched:remove_source(listener)
end

-- A delivery reached the receiver: trusted (it came to the secret path) it settles the task at
-- once; otherwise it only makes the task's waiter read the task now.
-- True when a task of this client took it; false when no task has that id (yet: a delivery can
-- come before the create's answer, and the receiver then keeps it for Task:create to claim).
function Client:_delivered(result, trusted)
  local t = self._tasks[result.task_id]
  if not t then return false end
  if trusted then t:_apply(result.state, result.images, result.error) end
  t:_wake()
  return true
end

--- After a restart, with a journal: the tasks created but not seen to finish (ready to wait on),
-- and the creates whose answer never came back (possibly created, id unknown: {local_id, input,
-- at}), which only the service's support can trace.
function Client:pending()
  self:_scheduler()
  if not self._journal then
    error("client:pending: this client has no journal (dh3.new{journal = PATH})", 2)
  end
  local state = self._journal:pending()
  local tasks = {}
  for i, t in ipairs(state.tasks) do tasks[i] = task_module.new(self, t.task_id, 2) end
  return tasks, state.unanswered
end

-- Frees everything at once: the engine (cancelling whatever is still in flight), the journal.
local function release(self)
  self._closed, self._closing = true, true
  self._sched.closing, self._sched.closed = true, true
  if self._listener then self._listener:close() end
  self._engine:close()
  if self._journal then self._journal:close() end
  headers_of[self] = nil
end

--- Closes the client. Creates already sent are let finish (each bounded by its request timeout):
-- their answers carry ids that are paid for, and they reach their callers (and the journal).
-- Everything else ends at once: transfers are cancelled, sleeps and waits return errors of
-- kind "cancelled", creates not yet sent are not sent. Then the engine is freed. Safe to call
-- more than once, and from a callback.
function Client:close()
  if self._closing then return end
  self._closing = true
  if self._listener then self._listener:close() end
  local sched = self._sched
  sched:begin_close(self._creates)
  if self._pacer then self._pacer:abort() end
  -- each create in flight ends by its own request timeout at the latest; the bound below only
  -- guards against a clock that misbehaves
  local give_up = sched.now() + self.timeout + 5
  while next(self._creates) and sched.now() < give_up do
    sched:step(sched:_wait_limit(1.0))
  end
  sched:step(0) -- what the last answers woke runs now, and sees the client closing
  release(self)
end

-- `local client <close> = ...` closes it at the end of the block on Lua 5.4 only; other Luas
-- have no to-be-closed variables.
Client.__close = Client.close
-- Collected: nothing can reach the client (nor any coroutine waiting on it) any more, so no one
-- is left to receive an answer: everything is freed at once.
-- Lua 5.1 and LuaJIT never run __gc for a table: there the engine and the journal (userdata)
-- still free themselves when collected, but nothing else runs: call close() yourself.
function Client:__gc()
  if not self._closed then release(self) end
end

return M
