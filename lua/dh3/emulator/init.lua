-- dh3-emulator: a faithful local double of the DH3 image-generation API (shared/api/dh3-api.md),
-- in pure Lua on luasocket, lua-cjson and lua-zlib. It never needs dh3.core.
--
-- Command line: bin/dh3-emulator --help (flags in dh3.emulator.options; prompt markers that force
-- outcomes in dh3.emulator.tasks). In a program, to share its loop with other work:
--   local emulator = require "dh3.emulator"
--   local emu = assert(emulator.new{port = 0, queue_time = 0, process_time = 0.1})
--   print(emu:url())
--   while running do emu:step(0.05) end    -- or emu:run() until emu:stop()
--   emu:close()
--
-- Modules: loop (coroutines on socket.select), stream + server (a generic HTTP/1.1 server; its
-- message framing is the library's dh3.http1), httpc (outgoing requests), api (endpoints), tasks
-- (the task clock), images (PNG/JPEG), reference ("auto" sizes), callbacks (deliveries), faults,
-- stats, options, random, json.
local looplib = require "dh3.emulator.loop"
local server = require "dh3.emulator.server"
local random = require "dh3.emulator.random"
local images = require "dh3.emulator.images"
local tasks = require "dh3.emulator.tasks"
local stats = require "dh3.emulator.stats"
local options = require "dh3.emulator.options"
local api = require "dh3.emulator.api"
local json = require "dh3.emulator.json"

local M = {}

M.VERSION = require("dh3").VERSION -- one version for the library and its emulator

local Emulator = {}
Emulator.__index = Emulator

-- Streams whose sequence a reset restarts (so a reset emulator behaves as a fresh one); ids go on,
-- so that an id from before a reset never names a task after it.
local RESET_STREAMS = { "outcomes", "faults", "colours" }

local function seed_streams(emu, names)
  for _, name in ipairs(names) do emu.rng[name] = random.new(emu.opts.seed, name) end
end

local function any_address(host)
  return host == "0.0.0.0" or host == "::" or host == "*"
end

--- Starts an emulator listening at once. opts: any option of dh3.emulator.options by its
-- underscore name (missing ones take their defaults). Returns the emulator, or nil, err.
function M.new(opts)
  local o = options.defaults()
  for name, value in pairs(opts or {}) do
    if not options.BY_NAME[name] then error(("dh3.emulator.new: unknown option %q"):format(tostring(name)), 2) end
    if name == "keys" and type(value) == "string" then value = assert(options.check("keys", value)) end
    o[name] = value
  end
  local emu = setmetatable({
    opts = o,
    rng = {},
    started = looplib.now(),
    generation = 0,
    credits = {},  -- key -> creates left (absent: opts.credits)
    windows = {},  -- key -> arrival times of accepted creates in the last second
    cache = images.new_cache(),
  }, Emulator)
  seed_streams(emu, RESET_STREAMS)
  seed_streams(emu, { "ids" })
  emu.stats = stats.new(emu.started)
  emu.tasks = tasks.new(emu)
  if (o.tls_cert == nil) ~= (o.tls_key == nil) then
    error("dh3.emulator.new: tls_cert and tls_key go together", 2)
  end
  emu.loop = looplib.new{ on_error = function(msg) emu:log_error(msg) end }
  local srv, err = server.new{
    host = o.host, port = o.port, loop = emu.loop, handler = api.handler(emu),
    tls = o.tls_cert and { certificate = o.tls_cert, key = o.tls_key } or nil,
    max_body = o.max_body, idle_timeout = o.idle_timeout,
    on_error = function(msg) emu:log_error(msg) end,
    error_body = function(status, message)
      return { ["Content-Type"] = "application/json" }, json.encode{ code = status, message = message }
    end,
  }
  if not srv then return nil, ("cannot listen on %s:%s: %s"):format(o.host, o.port, err) end
  emu.server = srv
  if o.public_url then
    emu.public_url = o.public_url
  else
    local host = srv:host()
    if any_address(host) then host = host:find(":", 1, true) and "::1" or "127.0.0.1" end
    if host:find(":", 1, true) then host = "[" .. host .. "]" end
    emu.public_url = ("%s://%s:%d"):format(o.tls_cert and "https" or "http", host, srv:port())
  end
  return emu
end

--- "http://HOST:PORT" (https with tls_cert), where it listens.
function Emulator:url()
  return self.server:url()
end

function Emulator:port()
  return self.server:port()
end

--- Serves what is ready, waiting at most timeout seconds.
function Emulator:step(timeout)
  return self.loop:step(timeout)
end

--- Serves until stop() is called (from a handler or another coroutine of its loop).
function Emulator:run()
  self.running = true
  while self.running do self.loop:step(1) end
end

function Emulator:stop()
  self.running = false
end

function Emulator:close()
  self.running = false
  self.server:close()
end

--- Forgets tasks, counters, pacing windows and spent credits, and abandons pending callbacks.
function Emulator:reset()
  self.generation = self.generation + 1
  self.tasks:clear()
  self.cache:clear()
  self.credits, self.windows = {}, {}
  self.started = looplib.now()
  self.stats = stats.new(self.started, self.stats.inflight.now)
  seed_streams(self, RESET_STREAMS)
end

--- One line on stderr when --log is on. Never given a key. What a client sent (a path, say) may
-- hold control characters: they are shown as "?", so that a line stays one line.
function Emulator:log(fmt, ...)
  if self.opts.log then
    local line = fmt:format(...):gsub("%c", "?")
    io.stderr:write(("dh3-emulator: %.3f "):format(looplib.now() - self.started), line, "\n")
    io.stderr:flush()
  end
end

-- Internal errors always reach stderr, cut short: the emulator's stderr may be a pipe nobody
-- reads until the end (as in spec/helpers/emulator.lua), and a full pipe would stop it.
function Emulator:log_error(msg)
  self.errors_logged = (self.errors_logged or 0) + 1
  if self.errors_logged > 100 then return end
  io.stderr:write("dh3-emulator: error: ", tostring(msg):sub(1, 2000), "\n")
  io.stderr:flush()
end

--- The command-line entry (bin/dh3-emulator). Exits 2 on bad flags, 0 on SIGINT.
function M.main(argv)
  local opts, usage = options.parse_args(argv or {})
  if not opts then
    io.stderr:write(usage, "\n")
    os.exit(2)
  end
  local emu, err = M.new(opts)
  if not emu then
    io.stderr:write("dh3-emulator: ", err, "\n")
    os.exit(1)
  end
  io.stdout:write("listening on ", emu:url(), "\n")
  io.stdout:flush()
  -- lua5.4 turns SIGINT into an "interrupted!" error in the main thread: a clean stop
  local ok, run_err = pcall(emu.run, emu)
  emu:close()
  if not ok then
    if tostring(run_err):find("interrupted!", 1, true) then os.exit(0) end
    io.stderr:write("dh3-emulator: ", tostring(run_err), "\n")
    os.exit(1)
  end
  os.exit(0)
end

return M
