-- A small HTTP/1.1 server that never waits on its own: the webhook receiver's. Its host (the
-- client's loop, which waits on every descriptor at once with curl_multi_poll) asks fds() which
-- descriptors to watch, waits, and hands serve() the ones found readable. Sockets are luasocket's,
-- non-blocking (timeout 0); nothing here calls select, so descriptor numbers past FD_SETSIZE work.
--
--   local httpd = require "dh3.httpd"
--   local srv = assert(httpd.new{ port = 0, handler = function(req, respond)
--     respond(200, { ["Content-Type"] = "text/plain" }, "hello " .. req.path)
--   end })
--   local fds, ready = {}, {}
--   while true do
--     local set, limit = srv:fds(fds)
--     ... wait until a descriptor of `set` is readable or `limit` seconds passed (nil: no limit),
--     ... put the readable ones in ready[1..n] (ready[n + 1] = nil)
--     srv:serve(ready)
--   end
--
-- What it serves is what a webhook needs, with every resource bounded: requests with a
-- Content-Length body or none (chunked bodies get 411), keep-alive, Expect: 100-continue, a
-- limit on the head and on the body, a deadline for each request (a connection idle or too slow
-- that long is closed), and a cap on open connections: at the cap, a new connection pushes out
-- the one that has waited longest without a request in progress (or, failing that, the oldest).
--
-- req: method, target, path (raw, no query), query (raw or nil), version ("1.1"), headers
-- (lowercase names; repeated fields joined with ", "), body (string), peer ("ip:port").
-- respond(status, headers, body) must be called before the handler returns (else: 500);
-- Content-Length, Date and Connection are set here. A handler error answers 500 and goes to
-- on_error. serve() never raises: what breaks one connection closes it and goes to on_error.
local socket = require "socket"
local http1 = require "dh3.http1"
local compat = require "dh3.compat"

local M = {}

M.DEFAULTS = {
  host = "127.0.0.1", port = 0, backlog = 1024, max_connections = 64, max_header = 8 * 1024,
  max_body = 64 * 1024, idle_timeout = 10,
}

local CHUNK = 16 * 1024
local LINGER = 1.0 -- seconds a refused connection is drained before it is closed (see refuse)
local DRAIN_BUDGET = 256 * 1024 -- bytes dropped per serve() from one draining connection
local SEND_RETRY = 0.05 -- how soon to try again an answer the peer is slow to take
local ACCEPT_PAUSE = 0.1 -- after accept failed (out of descriptors, say): the socket stays readable
local REPORT_EVERY = 10 -- seconds between two reports of the same accept failure

local Server = {}
Server.__index = Server

local function default_on_error(msg) io.stderr:write("dh3.httpd: ", msg, "\n") end

--- opts: handler (required), host, port (0: a free one), backlog, max_connections, max_header
-- and max_body (bytes), idle_timeout (seconds), clock (a function returning seconds; default
-- socket.gettime), on_error(message) (default: stderr). Defaults in M.DEFAULTS.
-- Returns the server, or nil, err when it cannot listen.
function M.new(opts)
  assert(type(opts) == "table" and type(opts.handler) == "function", "httpd.new: handler required")
  local d = M.DEFAULTS
  local lsock, err = socket.bind(opts.host or d.host, opts.port or d.port, opts.backlog or d.backlog)
  if not lsock then return nil, err end
  lsock:settimeout(0)
  local host, port = lsock:getsockname()
  local max_connections = opts.max_connections or d.max_connections
  local self = setmetatable({
    handler = opts.handler,
    on_error = opts.on_error or default_on_error,
    clock = opts.clock or socket.gettime,
    lsock = lsock,
    lfd = lsock:getfd(),
    bound_host = host,
    bound_port = tonumber(port),
    max_connections = max_connections,
    max_header = opts.max_header or d.max_header,
    max_body = opts.max_body or d.max_body,
    max_request = nil, -- set below: the most one connection buffers
    idle_timeout = opts.idle_timeout or d.idle_timeout,
    accept_budget = math.max(8, math.floor(max_connections / 2)), -- per serve(): see accept_all
    conns = {},  -- the open connections, dense
    by_fd = {},  -- [descriptor] = connection
    open = 0, total = 0, evicted = 0,
    paused_until = nil, -- accepting stops for a moment after accept failed
    last_accept_error = nil, last_accept_report = -math.huge,
    closed = false,
  }, Server)
  self.max_request = self.max_header + self.max_body + 4
  return self
end

function Server:port() return self.bound_port end
function Server:host() return self.bound_host end

--- "http://HOST:PORT" of the listening socket.
function Server:url()
  return http1.url("http", self.bound_host, self.bound_port)
end

--- Open connections now.
function Server:connections() return self.open end

--- Connection counters: {open = n, total = n (ever accepted), evicted = n (pushed out at the cap)}.
function Server:counts()
  return { open = self.open, total = self.total, evicted = self.evicted }
end

--- Fills `into` with the descriptors to wait on for reading (into[1..n], the rest cleared), and
-- returns it with the longest the host may wait before calling serve() (nil: only descriptors
-- matter). Allocates nothing once `into` has held that many entries.
function Server:fds(into)
  local n, limit = 0, nil
  if self.closed then
    for i = #into, 1, -1 do into[i] = nil end
    return into, nil
  end
  local now = self.clock()
  local paused = self.paused_until
  if paused and paused <= now then self.paused_until, paused = nil, nil end
  if paused then
    limit = paused - now
  else
    n = 1
    into[1] = self.lfd
  end
  local conns, max_request = self.conns, self.max_request
  for i = 1, #conns do
    local conn = conns[i]
    local wait = conn.deadline - now
    if conn.out then
      -- an answer waits for the peer to take it (only readability is watched: try again soon);
      -- a connection that cannot buffer more until then is not watched meanwhile
      if wait > SEND_RETRY then wait = SEND_RETRY end
      if conn.draining or conn.after_out or #conn.buf < max_request then
        n = n + 1
        into[n] = conn.fd
      end
    else
      n = n + 1
      into[n] = conn.fd
      if conn.more then wait = 0 end
    end
    if limit == nil or wait < limit then limit = wait end
  end
  for i = #into, n + 1, -1 do into[i] = nil end
  if limit and limit < 0 then limit = 0 end
  return into, limit
end

-- {======================================================================
-- Connections
-- ======================================================================

local function close_conn(self, conn)
  if conn.closed then return end
  conn.closed = true
  conn.sock:close()
  local conns = self.conns
  for i = #conns, 1, -1 do
    if conns[i] == conn then
      conns[i] = conns[#conns]
      conns[#conns] = nil
      break
    end
  end
  if self.by_fd[conn.fd] == conn then self.by_fd[conn.fd] = nil end
  self.open = self.open - 1
end

-- The connection to push out at the cap: a draining one, else the one idle the longest (nothing
-- of a request received, no answer waiting), else the one whose request started first.
local function victim(self)
  local best, best_rank, best_since
  for _, conn in ipairs(self.conns) do
    local rank
    if conn.draining then
      rank = 0
    elseif #conn.buf == 0 and not conn.out then
      rank = 1
    else
      rank = 2
    end
    if not best or rank < best_rank or (rank == best_rank and conn.since < best_since) then
      best, best_rank, best_since = conn, rank, conn.since
    end
  end
  return best
end

-- Accepts what waits, at most accept_budget connections: a connection accepted at the cap pushes
-- one out, and a bounded batch leaves the newest connections of the batch time to be read.
local function accept_all(self, now)
  for _ = 1, self.accept_budget do
    local sock, err = self.lsock:accept()
    if not sock then
      if err ~= "timeout" then
        self.paused_until = now + ACCEPT_PAUSE
        if err ~= self.last_accept_error or now - self.last_accept_report >= REPORT_EVERY then
          self.last_accept_error, self.last_accept_report = err, now
          self.on_error("cannot accept a connection: " .. tostring(err))
        end
      end
      return
    end
    sock:settimeout(0)
    sock:setoption("tcp-nodelay", true)
    if self.open >= self.max_connections then
      local old = victim(self)
      if old then
        close_conn(self, old)
        self.evicted = self.evicted + 1
      end
    end
    local conn = {
      sock = sock, fd = sock:getfd(), peer = nil,
      buf = "",        -- received, not yet served
      head = nil,      -- the parsed head of a request whose body is still coming
      out = nil, out_pos = 1, -- the answer not yet sent, from out_pos
      after_out = nil, -- once the answer is sent: "close", or "drain" (see refuse)
      since = now, deadline = now + self.idle_timeout, -- when the wait for a request began, and ends
      more = false,    -- luasocket may hold unread bytes (see receive)
      eof = false, draining = false, closed = false, served = false,
    }
    self.conns[#self.conns + 1] = conn
    self.by_fd[conn.fd] = conn
    self.open, self.total = self.open + 1, self.total + 1
  end
end

-- Sends what is queued; true when all of it is gone.
local function flush(conn)
  local out = conn.out
  if not out then return true end
  local last, err, partial = conn.sock:send(out, conn.out_pos)
  if last then
    conn.out, conn.out_pos = nil, 1
    return true
  end
  if err ~= "timeout" then
    conn.eof, conn.out = true, nil -- the peer is gone: nothing more to say to it
    return true
  end
  conn.out_pos = partial + 1
  return false
end

local function queue(conn, data)
  if conn.out then
    conn.out = conn.out:sub(conn.out_pos) .. data
  else
    conn.out = data
  end
  conn.out_pos = 1
end

local function format_response(req, status, headers, body, keep_alive)
  local head
  head, keep_alive = http1.response_head(req, status, headers, #body, keep_alive)
  return head .. body, keep_alive
end

local JSON = { ["Content-Type"] = "application/json" }

-- Answers a request the server refuses, then stops reading requests: the connection is drained
-- for a moment (closing with unread data would reset it, and the peer could lose the answer).
local function refuse(_, conn, problem, now)
  local body = ('{"code":%d,"message":"%s"}'):format(problem.status, problem.message)
  queue(conn, (format_response(nil, problem.status, JSON, body, false)))
  conn.after_out, conn.head, conn.buf = "drain", nil, ""
  conn.deadline = now + LINGER
end

-- Parses the head of the next request in conn.buf, once it is all there. Returns a pending
-- request {req, length, start}; or nil (wait for more); or nil, problem.
local function parse_head(self, conn)
  local buf = conn.buf
  local first = buf:find("[^\r\n]") -- blank lines before a request are skipped (RFC 9112 2.2)
  if not first then
    if #buf > 0 then conn.buf = "" end
    return nil
  end
  if first > 1 then
    buf = buf:sub(first)
    conn.buf = buf
  end
  local stop, stop_end = buf:find("\r?\n\r?\n")
  if not stop then
    if #buf > self.max_header then return http1.problem(431, "header section too large") end
    return nil
  end
  if stop_end > self.max_header then return http1.problem(431, "header section too large") end
  local lines = {}
  for line in (buf:sub(1, stop - 1) .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line:gsub("\r$", "")
  end
  local req, rproblem = http1.parse_request(lines)
  if not req then return nil, rproblem end
  local framing, fproblem = http1.framing(req.headers, false)
  if not framing then return nil, fproblem end
  if framing == "chunked" then return http1.problem(411, "send the body with a Content-Length") end
  if framing > self.max_body then return http1.problem(413, "request body too large") end
  local continue, eproblem = http1.expects_continue(req, framing)
  if continue == nil then return nil, eproblem end
  -- a client that waits for it before sending its body (libcurl does past 1 KiB)
  if continue and #buf - stop_end < framing then queue(conn, "HTTP/1.1 100 Continue\r\n\r\n") end
  local peer = conn.peer
  if not peer then
    local ip, port = conn.sock:getpeername()
    peer = ip and (ip .. ":" .. tostring(port)) or "?"
    conn.peer = peer
  end
  req.peer = peer
  return { req = req, length = framing, start = stop_end + 1 }
end

-- Calls the handler; returns status, headers, body.
local function dispatch(self, req)
  local status, headers, body
  local function respond(s, h, b)
    if status then return false end
    status, headers, body = s, h, b or ""
    return true
  end
  local ok, err = pcall(self.handler, req, respond)
  if not ok then
    self.on_error(("handler error on %s %s: %s"):format(req.method, req.path, tostring(err)))
    if not status then status, headers, body = 500, JSON, '{"code":500,"message":"internal error"}' end
  elseif not status then
    self.on_error(("the handler answered nothing to %s %s"):format(req.method, req.path))
    status, headers, body = 500, JSON, '{"code":500,"message":"internal error"}'
  end
  return compat.tointeger(status) or 500, headers, tostring(body)
end

-- Serves the next request in conn.buf once it is complete; true when it queued an answer.
local function process(self, conn, now)
  local pending = conn.head
  if not pending then
    local problem
    pending, problem = parse_head(self, conn)
    if problem then
      refuse(self, conn, problem, now)
      return false
    end
    if not pending then return false end
    conn.head = pending
  end
  local stop = pending.start + pending.length - 1
  if #conn.buf < stop then return false end
  local req = pending.req
  req.body = conn.buf:sub(pending.start, stop)
  conn.buf, conn.head = conn.buf:sub(stop + 1), nil
  local keep_alive = http1.keep_alive(req)
  if conn.eof and #conn.buf == 0 then keep_alive = false end -- half-closed: answer, then end
  local status, headers, body = dispatch(self, req)
  local response
  response, keep_alive = format_response(req, status, headers, body, keep_alive)
  queue(conn, response)
  if not keep_alive then conn.after_out = "close" end
  -- the next request has its own time, from now
  conn.since, conn.deadline = now, now + self.idle_timeout
  return true
end

-- Reads what waits on conn (all of it: luasocket keeps a buffer of its own, which no poll sees),
-- at most what a request may hold; conn.more says that more may wait.
local function receive(self, conn)
  conn.more = false
  -- after a refusal, what still comes is dropped
  local discard = conn.draining or conn.after_out == "drain"
  local budget = discard and DRAIN_BUDGET or (self.max_request - #conn.buf)
  while budget > 0 do
    local data, err, partial = conn.sock:receive(budget < CHUNK and budget or CHUNK)
    data = data or partial
    if data and #data > 0 then
      budget = budget - #data
      if not discard then conn.buf = conn.buf .. data end
    end
    if err == "timeout" then return end
    if err then
      conn.eof = true
      return
    end
  end
  conn.more = true
end

-- One turn for one connection: read (when `readable`), answer, send, and close when done.
local function serve_conn(self, conn, readable, now)
  if readable or conn.more then receive(self, conn) end
  while true do
    local answered = not conn.after_out and not conn.out and process(self, conn, now)
    if not flush(conn) then return end
    if not answered then break end -- else the next request may be in buf already (pipelined)
  end
  local after = conn.after_out
  if after == "close" then return close_conn(self, conn) end
  if after == "drain" and not conn.draining then
    conn.draining, conn.buf = true, ""
    conn.sock:shutdown("send")
  end
  if conn.eof then return close_conn(self, conn) end
end

--- Serves the connections whose descriptors are in ready[1..] (and those with work left over),
-- closes the ones past their deadline, and accepts new connections when the listening socket is
-- ready. Never raises. Allocates nothing when nothing is ready.
function Server:serve(ready)
  if self.closed then return end
  local now = self.clock()
  local by_fd, lfd, listen_ready = self.by_fd, self.lfd, false
  for i = 1, #ready do
    local fd = ready[i]
    if fd == lfd then
      listen_ready = true
    else
      local conn = by_fd[fd]
      if conn and not conn.closed then
        conn.served = now
        local ok, err = pcall(serve_conn, self, conn, true, now)
        if not ok then
          self.on_error("connection error: " .. tostring(err))
          close_conn(self, conn)
        end
      end
    end
  end
  -- work left over (unread bytes in luasocket's buffer, an answer not all sent), and deadlines;
  -- backwards, as close_conn moves the last connection into the slot it frees
  local conns = self.conns
  for i = #conns, 1, -1 do
    local conn = conns[i]
    if conn and conn.served ~= now and (conn.more or conn.out) then
      local ok, err = pcall(serve_conn, self, conn, false, now)
      if not ok then
        self.on_error("connection error: " .. tostring(err))
        close_conn(self, conn)
      end
    end
    conn = conns[i]
    if conn and conn.deadline <= now then close_conn(self, conn) end
  end
  if listen_ready and not self.paused_until and not self.closed then
    local ok, err = pcall(accept_all, self, now)
    if not ok then self.on_error("accept error: " .. tostring(err)) end
  end
end

--- Stops listening and closes every connection. Idempotent.
function Server:close()
  if self.closed then return end
  self.closed = true
  self.lsock:close()
  for i = #self.conns, 1, -1 do close_conn(self, self.conns[i]) end
end

return M
