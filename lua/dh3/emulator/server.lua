-- A generic, non-blocking HTTP/1.1 server on luasocket: keep-alive, pipelining, Content-Length and
-- chunked request bodies, Expect: 100-continue, HEAD, size limits, idle timeouts, and HTTPS when
-- given a certificate (luasec, loaded only then). It knows nothing of the DH3 API. Its framing
-- (request heads, bodies, response heads) is the library's dh3.http1, which the webhook
-- receiver's server (dh3.httpd) uses too; what is its own is the connection's life in a coroutine
-- of the emulator's loop, where a handler may sleep, answer later or pace a body.
--
--   local server = require "dh3.emulator.server"
--   local srv = assert(server.new{
--     host = "127.0.0.1", port = 0,            -- 0: any free port
--     handler = function(req, respond)
--       respond(200, {["content-type"] = "text/plain"}, "hello " .. req.path)
--     end,
--   })
--   print(srv:url())                            -- http://127.0.0.1:PORT
--   while true do srv:step(1) end               -- or step(0) once per frame of another loop
--   srv:close()
--
-- req: method, target (as sent), path (raw, without query), query (raw string or nil), version
-- ("1.1"), headers (lowercase names; repeated ones joined with ", "), body (string, "" if none),
-- peer ("ip:port").
-- respond(status, headers, body [, how]): headers maps names to values; Content-Length and Connection
-- are set by the server; for HEAD the body is not sent but its length is announced. how, optional:
-- {rate = bytes per second (the body is paced: the connection sleeps on the loop between slices,
-- and every other connection goes on), on_sent = function(ok) (called once the answer has been
-- written, ok false when the peer left first)}. respond(nil) closes the connection without
-- answering. respond may be called later than the handler's return (from any
-- coroutine or callback): the connection waits. The handler runs inside the connection's coroutine,
-- so it may also wait with srv.loop:sleep(s). A handler error answers 500 and is passed to on_error.
local socket = require "socket"
local looplib = require "dh3.emulator.loop"
local stream = require "dh3.emulator.stream"
local http1 = require "dh3.http1"

local M = {}

M.REASONS = http1.REASONS

local LINGER = 1.0 -- seconds spent draining an unread body after a refusal (see linger)
local PACE_STEP = 0.05 -- seconds between the slices of a paced body (respond's how.rate)

--- Percent-decodes s ("+" as space, as in query strings).
function M.url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parses a raw query string into a table of decoded name -> value (the first of repeated names).
function M.parse_query(query)
  local out = {}
  for pair in (query or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = M.url_decode(k)
    if out[k] == nil then out[k] = M.url_decode(v) end
  end
  return out
end

local function default_error_body(status, message)
  return { ["Content-Type"] = "text/plain; charset=utf-8" },
    ("%d %s: %s\n"):format(status, M.REASONS[status] or "Error", message)
end

local Server = {}
Server.__index = Server

--- opts: handler (required), host ("127.0.0.1"), port (0), loop (a dh3.emulator.loop; a new one
-- by default), max_body (1 MiB), max_header (16 KiB), idle_timeout (30 s), backlog (1024),
-- error_body(status, message) -> headers, body (how the server's own refusals look),
-- on_error(message) (default: stderr), tls ({certificate = PEM file, key = PEM file}: serve HTTPS).
-- Returns the server, or nil, err if it cannot listen (or load the certificate).
function M.new(opts)
  assert(type(opts) == "table" and type(opts.handler) == "function", "server.new: opts.handler required")
  local on_error = opts.on_error or function(msg) io.stderr:write("http server: ", msg, "\n") end
  local ssl, tls_ctx
  if opts.tls then
    local ok, lib = pcall(require, "ssl")
    if not ok then return nil, "HTTPS needs luasec (Debian: lua-sec): " .. tostring(lib) end
    for _, file in ipairs({ opts.tls.certificate, opts.tls.key }) do
      local f, ferr = io.open(file, "r")
      if not f then return nil, "cannot read " .. tostring(ferr) end
      f:close()
    end
    local ctx, cerr = lib.newcontext{
      mode = "server", protocol = "any", certificate = opts.tls.certificate, key = opts.tls.key,
      options = { "all" },
    }
    if not ctx then return nil, "cannot load the TLS certificate or key: " .. tostring(cerr) end
    ssl, tls_ctx = lib, ctx
  end
  local loop = opts.loop or looplib.new{ on_error = on_error }
  local lsock, err = socket.bind(opts.host or "127.0.0.1", opts.port or 0, opts.backlog or 1024)
  if not lsock then return nil, err end
  lsock:settimeout(0)
  local host, port = lsock:getsockname()
  local self = setmetatable({
    loop = loop,
    handler = opts.handler,
    lsock = lsock,
    bound_host = host,
    bound_port = tonumber(port),
    max_body = opts.max_body or 1024 * 1024,
    max_header = opts.max_header or 16 * 1024,
    idle_timeout = opts.idle_timeout or 30,
    error_body = opts.error_body or default_error_body,
    on_error = on_error,
    ssl = ssl, tls_ctx = tls_ctx,
    streams = {},          -- open connections, for close()
    open = 0, total = 0,   -- connection counters
    closed = false,
  }, Server)
  loop:spawn(self.accept_loop, self)
  return self
end

function Server:port() return self.bound_port end
function Server:host() return self.bound_host end

--- "http://HOST:PORT" (or https) of the listening socket.
function Server:url()
  return http1.url(self.tls_ctx and "https" or "http", self.bound_host, self.bound_port)
end

--- Connection counters: {open = n, total = n}.
function Server:counts()
  return { open = self.open, total = self.total }
end

--- Serves whatever is ready, waiting at most timeout seconds in one select.
function Server:step(timeout)
  return self.loop:step(timeout)
end

--- Stops listening and closes every connection. Idempotent.
function Server:close()
  if self.closed then return end
  self.closed = true
  self.loop:forget(self.lsock)
  self.lsock:close()
  for s in pairs(self.streams) do s:close() end
end

function Server:accept_loop()
  while not self.closed do
    if not self.loop:wait_readable(self.lsock) then return end
    while true do
      local sock, err = self.lsock:accept()
      if not sock then
        -- out of descriptors, say: the socket stays readable, so pause instead of spinning
        if err ~= "timeout" and not self.closed then self.loop:sleep(0.1) end
        break
      end
      sock:setoption("tcp-nodelay", true)
      self.open, self.total = self.open + 1, self.total + 1
      self.loop:spawn(self.serve_connection, self, stream.new(self.loop, sock))
    end
  end
end

-- Reads one request. Returns req; or nil, problem (answer it, then close); or nil (close quietly:
-- the peer left or idled out between requests).
function Server:read_request(conn, deadline)
  local lines, problem = http1.read_head(conn, self.max_header, deadline)
  if not lines then return nil, problem end
  local req, rproblem = http1.parse_request(lines)
  if not req then return nil, rproblem end
  local headers = req.headers
  local peer = conn.peer
  if not peer then
    local ip, port = conn.sock:getpeername()
    peer = ip and (ip .. ":" .. tostring(port))
  end
  req.peer = peer

  local framing, fproblem = http1.framing(headers, false)
  if not framing then return nil, fproblem end
  if framing ~= "chunked" and framing > self.max_body then
    return http1.problem(413, "request body too large")
  end
  local continue, eproblem = http1.expects_continue(req, framing)
  if continue == nil then return nil, eproblem end
  -- the client holds its body back until told to go on (libcurl does for bodies over 1 KiB)
  if continue and #conn.buf == 0 then
    if not conn:send_all("HTTP/1.1 100 Continue\r\n\r\n", deadline) then return nil end
  end
  local body, bproblem = http1.read_body(conn, framing, self.max_body, self.max_header, deadline)
  if not body then return nil, bproblem end
  req.body = body
  return req
end

-- Sends body at `rate` bytes per second at most, in slices PACE_STEP apart, sleeping on the loop
-- in between: a slice leaves no earlier than `rate` allows for the bytes up to its end, so the
-- whole body takes at least #body / rate seconds. true, or nil when the peer left.
function Server:send_paced(conn, body, rate)
  local n, loop = #body, self.loop
  local slice = math.max(1, math.floor(rate * PACE_STEP))
  local start, i = loop:now(), 1
  while i <= n do
    local j = math.min(n, i + slice - 1)
    local wait = start + j / rate - loop:now()
    if wait > 0 then loop:sleep(wait) end
    if self.closed then return nil end
    if not conn:send_all(body:sub(i, j), loop:now() + self.idle_timeout) then return nil end
    i = j + 1
  end
  return true
end

-- Sends a response; returns whether the connection may stay open, or nil when it could not be
-- written (the peer left). rate: pace the body (see send_paced).
function Server:write_response(conn, req, status, headers, body, keep_alive, rate)
  body = body or ""
  local head
  head, keep_alive = http1.response_head(req, status, headers, #body, keep_alive)
  local send_body = not http1.bodyless(status) and #body > 0 and not (req and req.method == "HEAD")
  -- a small body goes out with the head in one packet; a large one straight from its string
  if send_body and #body <= 16384 and not rate then
    head, send_body = head .. body, false
  end
  local deadline = self.loop:now() + self.idle_timeout
  if not conn:send_all(head, deadline) then return nil end
  if send_body then
    if rate then
      if not self:send_paced(conn, body, rate) then return nil end
    elseif not conn:send_all(body, deadline) then
      return nil
    end
  end
  return keep_alive
end

-- After refusing a request whose body was not read, reads and drops what the client still sends
-- for a moment before closing: closing with unread data makes the kernel reset the connection,
-- and the client may lose the answer it has not read yet.
function Server:linger(conn)
  if not conn.tls then conn.sock:shutdown("send") end -- (a TLS socket has no half-close)
  local deadline = self.loop:now() + LINGER
  local drained = 0
  while drained < 64 * 1024 * 1024 do
    conn.buf = ""
    if not conn:fill(deadline) then break end
    drained = drained + #conn.buf
  end
end

-- Calls the handler and waits for its answer, which may come after the handler has returned.
-- Returns status, headers, body, how; status nil means drop the connection.
function Server:dispatch(req)
  local loop = self.loop
  local answer, token
  local function respond(status, headers, body, how)
    if answer then return false end
    answer = { status = status, headers = headers, body = body, how = how }
    if token then loop:wake(token) end
    return true
  end
  local ok, err = pcall(self.handler, req, respond)
  if not ok then
    self.on_error(("handler error on %s %s: %s"):format(req.method, req.path, tostring(err)))
    respond(500, self.error_body(500, "internal error"))
  end
  if not answer then
    token = loop:token()
    loop:suspend()
  end
  return answer.status, answer.headers, answer.body, answer.how
end

function Server:serve_connection(conn)
  self.streams[conn] = true
  local ok, err = pcall(function()
    -- a peer that fails the handshake (one that refuses our certificate, say) just leaves
    if self.tls_ctx and not conn:starttls(self.ssl, self.tls_ctx, self.loop:now() + self.idle_timeout) then
      return
    end
    while not self.closed do
      local deadline = self.loop:now() + self.idle_timeout
      local req, problem = self:read_request(conn, deadline)
      if not req then
        if problem and not self.closed then
          local headers, body = self.error_body(problem.status, problem.message)
          self:write_response(conn, nil, problem.status, headers, body, false)
          self:linger(conn)
        end
        return
      end
      local keep_alive = http1.keep_alive(req)
      -- a half-closed peer still gets its answer; then the connection ends
      if conn.eof and #conn.buf == 0 then keep_alive = false end
      local status, headers, body, how = self:dispatch(req)
      if status == nil or self.closed then return end
      local keep = self:write_response(conn, req, status, headers, body, keep_alive, how and how.rate)
      if how and how.on_sent then
        local ok, err = pcall(how.on_sent, keep ~= nil)
        if not ok then self.on_error("on_sent: " .. tostring(err)) end
      end
      if not keep then return end
    end
  end)
  if not ok then self.on_error("connection error: " .. tostring(err)) end
  self.streams[conn] = nil
  self.open = self.open - 1
  conn:close()
end

return M
