-- Results pushed by the service: parsing a callback body, de-duplicating deliveries, and a
-- receiver served on the client's own engine for programs without a web server of their own: a
-- dh3.httpd server whose sockets the engine waits on with everything else (curl_multi_poll), and
-- which it then serves as engine:perform says which are readable. Nothing it meets raises into
-- the caller: failures go to the client's on_error handler.
-- Deliveries are unsigned: a delivery to the receiver's secret path (a random segment only the
-- service was told, through callback_url) is trusted; on a path without a secret it is a hint, and
-- the task is read with a GET before anything is believed.
local core = require "dh3.core"
local errors = require "dh3.errors"
local compat = require "dh3.compat"
local output = require "dh3.output"
local validate = require "dh3.validate"
local random = require "dh3.random"

local M = {}

M.MAX_BODY = 64 * 1024 -- a callback carries one task's state: a few hundred bytes

--- A callback body (string) -> {task_id, state, images, error}, or nil, err (kind "protocol").
function M.parse(body)
  if type(body) ~= "string" then
    error(("bad argument #1 to 'parse' (string expected, got %s)"):format(type(body)), 2)
  end
  local function refuse(why) return nil, errors.new("protocol", "callback body: " .. why) end
  if #body > M.MAX_BODY then return refuse(("larger than %d bytes"):format(M.MAX_BODY)) end
  local doc, jerr = core.json_decode(body, M.MAX_BODY)
  if doc == nil then return refuse("not JSON (" .. errors.sanitize(jerr or "", 80) .. ")") end
  if type(doc) ~= "table" then return refuse("not a JSON object") end
  if doc.code ~= nil and not compat.is_integer(doc.code) then return refuse("code is not an integer") end
  local result, why = output.parse(doc.nano_banana_pro_output)
  if not result then return refuse(why) end
  if not validate.task_id(result.task_id) then return refuse("no usable task_id") end
  return result
end

-- The default store of the de-duplicator: the keys seen, in memory, the oldest forgotten past
-- `capacity` (a delivery is retried within minutes, not days).
local MemoryStore = {}
MemoryStore.__index = MemoryStore

function M.memory_store(capacity)
  return setmetatable({ seen = {}, ring = {}, next = 1, capacity = capacity or 100000 }, MemoryStore)
end

--- true when `key` was not seen before (and remembers it).
function MemoryStore:add(key)
  if self.seen[key] then return false end
  local old = self.ring[self.next]
  if old then self.seen[old] = nil end
  self.ring[self.next], self.seen[key] = key, true
  self.next = self.next % self.capacity + 1
  return true
end

--- A de-duplicator keyed by task id: dedup:first(task_id) is true the first time only.
-- `store`, optional, is any object with add(key) -> true when new (a database, say).
function M.deduplicator(store)
  store = store or M.memory_store()
  return { first = function(_, task_id) return store:add(task_id) end, store = store }
end

-- Random hex from the kernel: the secret path segment must be unguessable.
local Listener = {}
Listener.__index = Listener

local LISTEN_OPTIONS = {
  host = "string", port = "number", path = "string", secret = { "boolean", "string" }, public_url = "string",
  max_body = "number", attach = "boolean", store = "table", max_connections = "number",
  idle_timeout = "number",
}

M.MAX_CONNECTIONS = 64 -- open connections a receiver holds at most (the service needs one at a time)
M.IDLE_TIMEOUT = 10    -- seconds a connection has to send a whole request
-- Deliveries that came before the answer to their create (the service can be that quick): kept
-- for the task that will claim them, at most this many, this long.
M.EARLY_MAX = 1000
M.EARLY_TTL = 600

local NOT_FOUND = '{"code":404,"message":"not found"}'
local OK = '{"code":200,"message":"ok"}'
local JSON = { ["Content-Type"] = "application/json" }

local REPORT_EVERY = 10 -- seconds between two reports of the same receiver failure

-- Hands a receiver failure to the client's on_error handler; the same failure again within
-- REPORT_EVERY seconds is not repeated (a failure met on every update() would flood the handler).
local function report(self, msg)
  local now = core.now()
  if msg == self.last_report and now - self.last_report_at < REPORT_EVERY then return end
  self.last_report, self.last_report_at = msg, now
  self.client._sched:report("webhook receiver: " .. msg)
end

--- Starts a receiver for `client` (see Client:listen). Returns it, or nil, err.
function M.listen(client, opts, level)
  opts = opts or {}
  validate.check_table("listen", opts, LISTEN_OPTIONS, level + 1)
  local path = opts.path or "/dh3/callback"
  if path:sub(1, 1) ~= "/" or path:find("[%s?#]") then
    error("listen: path must start with / and hold no spaces, ? or #", level)
  end
  local secret = opts.secret
  if secret == nil or secret == true then
    local why
    secret, why = random.hex(16)
    if not secret then return nil, errors.new("io", "no secret for the receiver: " .. why) end
  elseif secret and not secret:match("^[%w_%-]+$") or secret and #secret < 16 then
    error("listen: a secret must be at least 16 letters, digits, - or _", level)
  end
  local max_connections = opts.max_connections or M.MAX_CONNECTIONS
  -- the engine waits on at most 256 descriptors of ours: the connections and the listening socket
  if compat.tointeger(max_connections) == nil or max_connections < 1 or max_connections > 250 then
    error("listen: max_connections must be a whole number from 1 to 250", level)
  end
  local idle_timeout = opts.idle_timeout or M.IDLE_TIMEOUT
  if not (idle_timeout > 0 and idle_timeout < math.huge) then
    error("listen: idle_timeout must be a number of seconds > 0", level)
  end
  local ok, httpd = pcall(require, "dh3.httpd")
  if not ok then
    return nil, errors.new("invalid_request", "the webhook receiver needs luasocket (Debian: lua-socket): "
      .. errors.sanitize(httpd, 120))
  end
  local self = setmetatable({
    client = client,
    engine = client._engine,
    path = path:gsub("/+$", "") .. (secret and ("/" .. secret) or ""),
    trusted = secret ~= false,
    dedup = M.deduplicator(opts.store),
    attach = opts.attach ~= false,
    counts = { received = 0, accepted = 0, duplicates = 0, refused = 0, not_found = 0, early = 0 },
    fds = {},   -- the descriptors to wait on (wait_set)
    ready = {}, -- the ones found readable (step)
    -- early deliveries: [task id] = {result, trusted, at}, and their ids in arrival order
    early = {}, early_n = 0, early_order = {}, early_head = 1, early_tail = 0,
    last_report = nil, last_report_at = -math.huge,
    serving = false, closed = false,
  }, Listener)
  local srv, err = httpd.new{
    host = opts.host or "127.0.0.1", port = opts.port or 0,
    max_body = opts.max_body or M.MAX_BODY, max_connections = max_connections, idle_timeout = idle_timeout,
    clock = core.now,
    handler = function(req, respond) return self:_handle(req, respond) end,
    on_error = function(msg) report(self, msg) end,
  }
  if not srv then
    return nil, errors.new("network", "cannot listen: " .. errors.sanitize(err, 120))
  end
  self.server = srv
  self.url = (opts.public_url and opts.public_url:gsub("/+$", "") or srv:url()) .. self.path
  return self
end

-- Forgets early deliveries past M.EARLY_TTL, and the oldest past M.EARLY_MAX.
local function trim_early(self, now)
  local order, early = self.early_order, self.early
  while self.early_head <= self.early_tail do
    local id = order[self.early_head]
    local kept = early[id]
    if kept and kept.id_slot == self.early_head then
      if self.early_n <= M.EARLY_MAX and now - kept.at < M.EARLY_TTL then break end
      early[id] = nil
      self.early_n = self.early_n - 1
    end
    order[self.early_head] = nil
    self.early_head = self.early_head + 1
  end
end

-- Keeps a delivery no task of this client took (yet): its create may still wait for its answer.
local function keep_early(self, result, trusted)
  local now = core.now()
  local id = result.task_id
  if not self.early[id] then self.early_n = self.early_n + 1 end
  self.early_tail = self.early_tail + 1
  self.early_order[self.early_tail] = id
  self.early[id] = { result = result, trusted = trusted, at = now, id_slot = self.early_tail }
  self.counts.early = self.counts.early + 1
  trim_early(self, now)
end

--- Hands the task `task_id` the delivery that came for it before its id was known, if one was
-- kept: the value of client:_delivered (true when a task took it), or nil when none was kept.
-- Called by Task:create as soon as the id is in hand. Never raises.
function Listener:claim(task_id)
  local kept = self.early[task_id]
  if not kept then return nil end
  self.early[task_id] = nil
  self.early_n = self.early_n - 1
  if core.now() - kept.at >= M.EARLY_TTL then return nil end
  local ok, taken = pcall(self.client._delivered, self.client, kept.result, kept.trusted)
  if not ok then
    report(self, "applying an early delivery: " .. tostring(taken))
    return false
  end
  return taken
end

function Listener:_handle(req, respond)
  local counts = self.counts
  if req.method ~= "POST" or req.path ~= self.path then
    -- the same answer for a wrong method as for a wrong path: probing learns nothing
    counts.not_found = counts.not_found + 1
    respond(404, JSON, NOT_FOUND)
    return
  end
  counts.received = counts.received + 1
  -- acknowledge at once (the service's advice), then do the work
  respond(200, JSON, OK)
  local result = M.parse(req.body or "")
  if not result then
    counts.refused = counts.refused + 1
    return
  end
  local ok, first = pcall(self.dedup.first, self.dedup, result.task_id)
  if not ok then
    -- a store that fails must not cost the result: handled as new (a repeat changes nothing)
    report(self, "the de-duplicator's store failed: " .. tostring(first))
    first = true
  end
  if not first then
    counts.duplicates = counts.duplicates + 1
    return
  end
  counts.accepted = counts.accepted + 1
  if self.client:_delivered(result, self.trusted) ~= true then keep_early(self, result, self.trusted) end
end

-- The scheduler's I/O source interface: the descriptors to wait on, and the longest wait.
function Listener:wait_set()
  local ok, set, limit = pcall(self.server.fds, self.server, self.fds)
  if not ok then
    report(self, tostring(set))
    return self.fds, 1
  end
  return set, limit
end

local function serve(self)
  local fds = self.server:fds(self.fds)
  -- which of our descriptors are readable: one look at them, waiting for nothing
  self.engine:perform(0, fds, self.ready)
  self.server:serve(self.ready)
end

--- Serves whatever is ready. Never raises: a failure goes to the client's on_error handler.
function Listener:step()
  -- not again from inside a delivery (a task it woke may drive the loop): the next step serves
  if self.closed or self.serving then return end
  self.serving = true
  local ok, err = pcall(serve, self)
  self.serving = false
  if not ok then report(self, tostring(err)) end
end

--- The port it listens on.
function Listener:port()
  return self.server:port()
end

--- The connections open now (at most max_connections).
function Listener:connections()
  return self.server:connections()
end

--- Stops listening. Idempotent.
function Listener:close()
  if self.closed then return end
  self.closed = true
  self.client:_unlisten(self)
  self.server:close()
end

return M
