-- dh3.luv: drives a client from a luv (libuv) loop, so that a host with a loop of its own
-- (Neovim through vim.loop, luvit, any program running uv.run) needs no polling timer:
--   local dh3luv = require "dh3.luv"
--   local driver = dh3luv.attach(client, vim.loop)   -- or require "luv"
--   client:spawn(function() ... task:create() ... task:wait() ... task:download(dir) end)
-- Each descriptor libcurl wants watched gets a uv poll handle; libcurl's timer and the client's
-- own (a sleeping coroutine, a back-off, the pacing of creates) share one uv timer, armed for
-- whichever comes first; when either fires, the client acts on it (client:socket_action) and
-- everything that completed runs there, as in update(). A uv prepare handle (unreferenced: it
-- keeps no loop alive, and runs only when the loop wakes for something else) picks up what the
-- host's own code started between two wake-ups (a create made from a key press). Idle, nothing
-- is armed: the loop does not wake for dh3.
--
-- The luv module is an argument, so this file loads nowhere else (it requires nothing of luv's).
-- Written in the Lua that 5.1 to 5.4 and LuaJIT all accept.
--
-- The callbacks run in luv's callbacks: in Neovim, in a "fast" context, where most of vim.api
-- may not be called (use vim.schedule). A blocking dh3 call made there (outside client:spawn)
-- still works, by polling the descriptors itself, but blocks the host's loop meanwhile.
local M = {}

local ceil = math.ceil

local Driver = {}
Driver.__index = Driver
Driver.__name = "dh3.luv.driver"

local function check_uv(uv)
  if type(uv) ~= "table" or type(uv.new_poll) ~= "function" or type(uv.new_timer) ~= "function"
      or type(uv.new_prepare) ~= "function" then
    error("dh3.luv.attach: argument #2 must be the luv module (Neovim: vim.loop; else require \"luv\")", 3)
  end
end

-- luv's poll events ("r", "w", "rw", with "d" for a peer that hung up and "p" for priority data)
-- to socket_action's ("r", "w", "rw")
local EVENTS = { r = "r", w = "w", rw = "rw", d = "r", rd = "r", wd = "rw", rwd = "rw" }

--- Attaches `client` to the luv loop `uv`: from now on the loop drives it (nothing may be in
-- flight when a client made without loop = "host" is attached). Returns the driver;
-- driver:close() detaches it (client:close() does not: close the driver when the client goes).
-- opts (optional): on_error = function(msg) for a failure of the loop itself (a poll handle
-- that could not be made): by default the client's error handler.
function M.attach(client, uv, opts)
  if type(client) ~= "table" or type(client.socket_action) ~= "function" then
    error("dh3.luv.attach: argument #1 must be a dh3 client", 2)
  end
  check_uv(uv)
  if opts ~= nil and type(opts) ~= "table" then
    error("dh3.luv.attach: argument #3 must be a table of options", 2)
  end
  client:use_host_loop()
  local self = setmetatable({
    client = client,
    uv = uv,
    polls = {},       -- [fd] = uv poll handle
    callbacks = {},   -- [fd] = its poll callback, made once per descriptor
    changes = {},     -- reused by client:watched
    timer = uv.new_timer(),
    timer_ms = nil,   -- what the timer is armed for (loop time), or nil
    prepare = uv.new_prepare(),
    on_error = opts and opts.on_error,
    closed = false,
    -- counts of the callbacks run, for a host (or a spec) that wants to see the loop is idle
    counts = { poll = 0, timer = 0 },
  }, Driver)
  self.on_timer = function()
    self.timer_ms = nil
    self.counts.timer = self.counts.timer + 1
    self:_act()
  end
  self.prepare:start(function()
    local ok, err = pcall(self.sync, self)
    if not ok then self:_report(err) end
  end)
  self.prepare:unref()
  self:sync()
  return self
end

function Driver:__tostring()
  local n = 0
  for _ in pairs(self.polls) do n = n + 1 end
  return ("dh3.luv.driver(%d descriptors%s)"):format(n, self.closed and ", closed" or "")
end

function Driver:_report(msg)
  if self.on_error then
    self.on_error(msg)
  else
    self.client._sched:report("dh3.luv: " .. tostring(msg))
  end
end

local function act(self, fd, events)
  if self.client:is_closed() then return self:close() end
  self.client:socket_action(fd, events)
  self:sync()
end

-- Runs the client on a ready descriptor (fd, events) or, without fd, on the timer; then brings
-- the handles up to date. Never raises into luv (whose default for an error in a callback is to
-- end the process): what fails (out of memory in the engine, say) goes to the error handler.
-- The user's own callbacks are protected further down, by the client.
function Driver:_act(fd, events)
  if self.closed then return end
  local ok, err = pcall(act, self, fd, events)
  if not ok then self:_report(err) end
end

function Driver:_poll_callback(fd)
  return function(err, events)
    self.counts.poll = self.counts.poll + 1
    if err then
      self:_act(fd, "e")
    else
      self:_act(fd, EVENTS[events] or "")
    end
  end
end

--- Brings the uv handles up to date with what the client wants watched and when it wants to be
-- woken. The driver calls it after every action and before every wait of the loop; a host calls
-- it only if it starts work outside the loop and wants it sent before the loop's next turn.
function Driver:sync()
  if self.closed then return end
  local client = self.client
  if client:is_closed() then return self:close() end
  local changes, polls, uv = self.changes, self.polls, self.uv
  local n = client:watched(changes)
  for i = 1, 2 * n, 2 do
    local fd, events = changes[i], changes[i + 1]
    local poll = polls[fd]
    if events == "" then
      if poll then
        polls[fd], self.callbacks[fd] = nil, nil
        poll:stop()
        poll:close()
      end
    else
      if not poll then
        local err
        poll, err = uv.new_poll(fd)
        if not poll then
          self:_report(("cannot watch descriptor %d: %s"):format(fd, tostring(err)))
        else
          polls[fd] = poll
        end
      end
      if poll then
        local callback = self.callbacks[fd]
        if not callback then
          callback = self:_poll_callback(fd)
          self.callbacks[fd] = callback
        end
        poll:start(events, callback)
      end
    end
  end
  local timeout = client:next_timeout()
  if timeout == nil then
    if self.timer_ms then
      self.timer_ms = nil
      self.timer:stop()
    end
  else
    local ms = ceil(timeout * 1000)
    -- the loop's idea of now is cached from the start of its turn, and may lag: a timer armed
    -- from a stale now would fire early, find nothing due, and fire again
    uv.update_time()
    local at = uv.now() + ms
    if self.timer_ms ~= at then
      self.timer_ms = at
      self.timer:start(ms, 0, self.on_timer)
    end
  end
end

--- Detaches: every handle of the driver is closed; the client keeps its work (a blocking call,
-- update() or another driver carries it on).
function Driver:close()
  if self.closed then return end
  self.closed = true
  for fd, poll in pairs(self.polls) do
    self.polls[fd], self.callbacks[fd] = nil, nil
    poll:stop()
    poll:close()
  end
  self.timer:stop()
  self.timer:close()
  self.prepare:stop()
  self.prepare:close()
end

return M
