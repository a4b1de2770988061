-- Results pushed by the service: parsing a callback body, de-duplicating deliveries, and a
-- receiver served on the client's own engine for programs without a web server of their own.
-- Deliveries are unsigned: a delivery to the receiver's secret path (a random segment only the
-- service was told, through callback_url) is trusted; on a path without a secret it is a hint, and
-- the task is read with a GET before anything is believed.
local core = require "dh3.core"
local errors = require "dh3.errors"
local output = require "dh3.output"
local validate = require "dh3.validate"

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
  if doc.code ~= nil and math.type(doc.code) ~= "integer" then return refuse("code is not an integer") end
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
local function random_hex(bytes)
  local f = assert(io.open("/dev/urandom", "rb"))
  local raw = f:read(bytes)
  f:close()
  return (raw:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local Listener = {}
Listener.__index = Listener

local LISTEN_OPTIONS = {
  host = "string", port = "number", path = "string", secret = { "boolean", "string" }, public_url = "string",
  max_body = "number", attach = "boolean", store = "table",
}

local NOT_FOUND = '{"code":404,"message":"not found"}'
local OK = '{"code":200,"message":"ok"}'

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
    secret = random_hex(16)
  elseif secret and not secret:match("^[%w_%-]+$") or secret and #secret < 16 then
    error("listen: a secret must be at least 16 letters, digits, - or _", level)
  end
  local ok, server = pcall(require, "dh3.emulator.server")
  if not ok then
    return nil, errors.new("invalid_request", "the webhook receiver needs luasocket (Debian: lua-socket): "
      .. errors.sanitize(server, 120))
  end
  local self = setmetatable({
    client = client,
    path = path:gsub("/+$", "") .. (secret and ("/" .. secret) or ""),
    trusted = secret ~= false,
    dedup = M.deduplicator(opts.store),
    attach = opts.attach ~= false,
    counts = { received = 0, accepted = 0, duplicates = 0, refused = 0, not_found = 0 },
    fds = {},
  }, Listener)
  local srv, err = server.new{
    host = opts.host or "127.0.0.1", port = opts.port or 0,
    max_body = opts.max_body or M.MAX_BODY, idle_timeout = 10,
    handler = function(req, respond) self:_handle(req, respond) end,
    on_error = function(msg) io.stderr:write("dh3: webhook receiver: ", msg, "\n") end,
  }
  if not srv then
    return nil, errors.new("network", "cannot listen: " .. errors.sanitize(err, 120))
  end
  self.server = srv
  self.url = (opts.public_url and opts.public_url:gsub("/+$", "") or srv:url()) .. self.path
  return self
end

function Listener:_handle(req, respond)
  local counts = self.counts
  if req.method ~= "POST" or req.path ~= self.path then
    -- the same answer for a wrong method as for a wrong path: probing learns nothing
    counts.not_found = counts.not_found + 1
    respond(404, { ["Content-Type"] = "application/json" }, NOT_FOUND)
    return
  end
  counts.received = counts.received + 1
  -- acknowledge at once (the service's advice), then do the work
  respond(200, { ["Content-Type"] = "application/json" }, OK)
  local result = M.parse(req.body or "")
  if not result then
    counts.refused = counts.refused + 1
    return
  end
  if not self.dedup:first(result.task_id) then
    counts.duplicates = counts.duplicates + 1
    return
  end
  counts.accepted = counts.accepted + 1
  self.client:_delivered(result, self.trusted)
end

-- The scheduler's I/O source interface.
function Listener:wait_set()
  return self.server.loop:wait_set(self.fds)
end

function Listener:step(timeout)
  return self.server:step(timeout)
end

--- The port it listens on.
function Listener:port()
  return self.server:port()
end

--- Stops listening. Idempotent.
function Listener:close()
  if self.closed then return end
  self.closed = true
  self.client:_unlisten(self)
  self.server:close()
end

return M
