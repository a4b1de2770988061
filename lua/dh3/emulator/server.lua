-- A generic, non-blocking HTTP/1.1 server on luasocket: keep-alive, pipelining, Content-Length and
-- chunked request bodies, Expect: 100-continue, HEAD, size limits, idle timeouts. It knows nothing
-- of the DH3 API, so the client's webhook receiver can use it too.
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
-- respond(status, headers, body): headers maps names to values; Content-Length and Connection are
-- set by the server; for HEAD the body is not sent but its length is announced. respond(nil) closes
-- the connection without answering. respond may be called later than the handler's return (from any
-- coroutine or callback): the connection waits. The handler runs inside the connection's coroutine,
-- so it may also wait with srv.loop:sleep(s). A handler error answers 500 and is passed to on_error.
local socket = require "socket"
local looplib = require "dh3.emulator.loop"

local M = {}

M.REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [206] = "Partial Content", [301] = "Moved Permanently", [302] = "Found", [304] = "Not Modified",
  [400] = "Bad Request", [401] = "Unauthorized", [402] = "Payment Required", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [408] = "Request Timeout", [411] = "Length Required",
  [413] = "Content Too Large", [415] = "Unsupported Media Type", [417] = "Expectation Failed",
  [422] = "Unprocessable Content", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error", [501] = "Not Implemented",
  [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout",
  [505] = "HTTP Version Not Supported",
}

local TOKEN = "^[%w!#%$%%&'%*%+%.%^_`|~%-]+$"
local READ_CHUNK = 65536
local LINGER = 1.0 -- seconds spent draining an unread body before closing, so the client sees our answer

--- Percent-decodes s ("+" as space, as in query strings).
function M.url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parses a raw query string into a table of decoded name -> value (the first of repeated names).
function M.parse_query(query)
  local out = {}
  for pair in (query or ""):gmatch("[^&;]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = M.url_decode(k)
    if out[k] == nil then out[k] = M.url_decode(v) end
  end
  return out
end

local function default_error_body(status, message)
  return { ["content-type"] = "text/plain; charset=utf-8" },
    ("%d %s: %s\n"):format(status, M.REASONS[status] or "Error", message)
end

local Server = {}
Server.__index = Server

--- opts: handler (required), host ("127.0.0.1"), port (0), loop (a dh3.emulator.loop; a new one
-- by default), max_body (1 MiB), max_header (16 KiB), idle_timeout (30 s), backlog (1024),
-- error_body(status, message) -> headers, body (how the server's own 4xx look),
-- on_error(message) (default: stderr). Returns the server, or nil, err if it cannot listen.
function M.new(opts)
  assert(type(opts) == "table" and type(opts.handler) == "function", "server.new: opts.handler required")
  local loop = opts.loop or looplib.new{ on_error = opts.on_error }
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
    on_error = opts.on_error or function(msg) io.stderr:write("http server: ", msg, "\n") end,
    conns = {},            -- socket -> true, for close()
    open = 0, total = 0,   -- connection counters
    closed = false,
  }, Server)
  loop:spawn(self.accept_loop, self)
  return self
end

function Server:port() return self.bound_port end
function Server:host() return self.bound_host end

function Server:url()
  local h = self.bound_host
  if h:find(":", 1, true) then h = "[" .. h .. "]" end
  return ("http://%s:%d"):format(h, self.bound_port)
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
  for sock in pairs(self.conns) do
    self.loop:forget(sock)
    sock:close()
  end
end

function Server:accept_loop()
  while not self.closed do
    local ok = self.loop:wait_readable(self.lsock)
    if not ok then return end
    while true do
      local sock = self.lsock:accept()
      if not sock then break end
      sock:settimeout(0)
      sock:setoption("tcp-nodelay", true)
      self.open, self.total = self.open + 1, self.total + 1
      self.conns[sock] = true
      self.loop:spawn(self.serve_connection, self, sock)
    end
  end
end

-- ---------------------------------------------------------------------------------------------
-- Connection I/O. A Conn keeps unparsed bytes in buf; eof is set once the peer has half-closed.

local Conn = {}
Conn.__index = Conn

-- Reads what is available (waiting until at least one byte or the deadline).
-- Returns true, or nil and "timeout" | "closed" | a socket error.
function Conn:fill(deadline)
  if self.eof then return nil, "closed" end
  local parts = {}
  while true do
    local data, err, partial = self.sock:receive(READ_CHUNK)
    data = data or partial
    if data and #data > 0 then parts[#parts + 1] = data end
    if err == "timeout" then
      if #parts > 0 then break end
      local ok, werr = self.loop:wait_readable(self.sock, deadline)
      if not ok then return nil, werr end
    elseif err then
      if err == "closed" then self.eof = true else self.error = err end
      if #parts > 0 then break end
      return nil, err
    end
  end
  self.buf = self.buf .. table.concat(parts)
  return true
end

-- Exactly n bytes (from buf, then the socket), or nil, err.
function Conn:read_exact(n, deadline)
  if #self.buf >= n then
    local s = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    return s
  end
  local parts, have = { self.buf }, #self.buf
  self.buf = ""
  while have < n do
    if self.eof then return nil, "closed" end
    local data, err, partial = self.sock:receive(math.min(n - have, READ_CHUNK))
    data = data or partial
    if data and #data > 0 then
      parts[#parts + 1] = data
      have = have + #data
    end
    if err == "timeout" then
      if have < n then
        local ok, werr = self.loop:wait_readable(self.sock, deadline)
        if not ok then return nil, werr end
      end
    elseif err then
      if err == "closed" then self.eof = true end
      if have < n then return nil, err end
    end
  end
  return table.concat(parts)
end

-- A line ending in LF (CR stripped), at most limit bytes, or nil, err ("too long" past limit).
function Conn:read_line(limit, deadline)
  while true do
    local i = self.buf:find("\n", 1, true)
    if i then
      if i > limit then return nil, "too long" end
      local line = self.buf:sub(1, i - 1):gsub("\r$", "")
      self.buf = self.buf:sub(i + 1)
      return line
    end
    if #self.buf > limit then return nil, "too long" end
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

function Conn:send_all(data, deadline)
  local i, n = 1, #data
  while i <= n do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = partial + 1
      if i <= n then
        local ok, werr = self.loop:wait_writable(self.sock, deadline)
        if not ok then return nil, werr end
      end
    else
      return nil, err
    end
  end
  return true
end

-- ---------------------------------------------------------------------------------------------
-- Request parsing. Each failure carries the status to answer with; all of them close the
-- connection, since after a framing error the next request's start is unknown.

local function fail(status, message)
  return nil, { status = status, message = message }
end

-- Reads the request line and headers. Returns req, or nil, problem ({status, message}) or
-- nil, nil when the peer went away or idled out before sending anything.
function Server:read_head(conn, deadline)
  -- wait for the head's end (a blank line), skipping blank lines that precede a request
  local stop
  while true do
    conn.buf = conn.buf:gsub("^[\r\n]+", "")
    local _, e = conn.buf:find("\r?\n\r?\n")
    if e then
      stop = e
      break
    end
    if #conn.buf > self.max_header then return fail(431, "request head too large") end
    local ok, err = conn:fill(deadline)
    if not ok then
      if #conn.buf > 0 and err == "timeout" then return fail(408, "request head incomplete") end
      if #conn.buf > 0 and err == "closed" then return fail(400, "request head incomplete") end
      return nil, nil
    end
  end
  if stop > self.max_header then return fail(431, "request head too large") end
  local head = conn.buf:sub(1, stop)
  conn.buf = conn.buf:sub(stop + 1)

  local lines = {}
  for line in head:gmatch("([^\n]*)\n") do lines[#lines + 1] = line:gsub("\r$", "") end
  local method, target, major, minor = lines[1]:match("^(%S+) (%S+) HTTP/(%d)%.(%d)$")
  if not method or not method:match(TOKEN) then return fail(400, "malformed request line") end
  if major ~= "1" then return fail(505, "only HTTP/1.x is served") end

  local headers = {}
  for i = 2, #lines do
    local line = lines[i]
    if line ~= "" then
      local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
      if not name or not name:match(TOKEN) or value:find("[%z\r\n]") then
        return fail(400, "malformed header line")
      end
      name = name:lower()
      local old = headers[name]
      if old == nil then
        headers[name] = value
      elseif name == "content-length" then
        if old ~= value then return fail(400, "conflicting Content-Length") end
      else
        headers[name] = old .. ", " .. value
      end
    end
  end

  -- absolute-form targets (as sent to proxies) are accepted for the same path
  local path_query = target:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/]*(/.*)$") or target
  if target:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/]*$") then path_query = "/" end
  local path, query = path_query:match("^([^?#]*)%??([^#]*)")
  if path:sub(1, 1) ~= "/" and not (method == "OPTIONS" and target == "*") then
    return fail(400, "malformed request target")
  end
  local ip, port = conn.sock:getpeername()
  return {
    method = method, target = target, path = path, query = query ~= "" and query or nil,
    version = major .. "." .. minor, headers = headers, peer = ip and (ip .. ":" .. tostring(port)),
  }
end

-- Reads a chunked body into a string, or nil, problem.
function Server:read_chunked(conn, deadline)
  local parts, total = {}, 0
  while true do
    local line, err = conn:read_line(1024, deadline)
    if not line then return fail(400, "chunked body: " .. err) end
    local size = line:match("^(%x+)[ \t]*;?.*$")
    size = size and #size <= 8 and tonumber(size, 16)
    if not size then return fail(400, "chunked body: bad chunk size") end
    if size == 0 then break end
    total = total + size
    if total > self.max_body then return fail(413, "request body too large") end
    local data, rerr = conn:read_exact(size, deadline)
    if not data then return fail(400, "chunked body: " .. rerr) end
    parts[#parts + 1] = data
    local crlf = conn:read_line(2, deadline)
    if crlf ~= "" then return fail(400, "chunked body: missing CRLF after chunk") end
  end
  -- trailer fields, ignored, up to the blank line
  local trailer = 0
  while true do
    local line, err = conn:read_line(self.max_header, deadline)
    if not line then return fail(400, "chunked body: " .. err) end
    if line == "" then break end
    trailer = trailer + #line
    if trailer > self.max_header then return fail(431, "trailer too large") end
  end
  return table.concat(parts)
end

-- Reads the body announced by req's headers into req.body, or returns nil, problem.
function Server:read_body(conn, req, deadline)
  local h = req.headers
  local te, cl = h["transfer-encoding"], h["content-length"]
  local chunked = false
  if te then
    if cl then return fail(400, "both Transfer-Encoding and Content-Length") end
    local last = te:lower():match("([^,%s]+)%s*$")
    if last ~= "chunked" then return fail(501, "unsupported Transfer-Encoding") end
    chunked = true
  end
  local length = 0
  if cl then
    if not cl:match("^%d+$") or #cl > 15 then return fail(400, "malformed Content-Length") end
    length = tonumber(cl)
    if length > self.max_body then return fail(413, "request body too large") end
  end
  local expect = h["expect"]
  if expect then
    if expect:lower() ~= "100-continue" then return fail(417, "unsupported Expect") end
    if (chunked or length > 0) and req.version == "1.1" and #conn.buf == 0 then
      local ok = conn:send_all("HTTP/1.1 100 Continue\r\n\r\n", deadline)
      if not ok then return nil, nil end
    end
  end
  if chunked then
    local body, problem = self:read_chunked(conn, deadline)
    if not body then return nil, problem end
    req.body = body
  elseif length > 0 then
    local body, err = conn:read_exact(length, deadline)
    if not body then
      if err == "timeout" then return fail(408, "request body incomplete") end
      return nil, nil
    end
    req.body = body
  else
    req.body = ""
  end
  return true
end

-- ---------------------------------------------------------------------------------------------
-- Responses

local function http_date()
  return os.date("!%a, %d %b %Y %H:%M:%S GMT")
end

-- Sends a response; returns true if the connection may stay open.
function Server:write_response(conn, req, status, headers, body, keep_alive)
  body = body or ""
  local lines = { ("HTTP/1.1 %d %s\r\n"):format(status, M.REASONS[status] or "Unknown") }
  local has_length = false
  for name, value in pairs(headers or {}) do
    local lname = name:lower()
    if lname == "connection" then
      if tostring(value):lower():find("close", 1, true) then keep_alive = false end
    else
      if lname == "content-length" then has_length = true end
      lines[#lines + 1] = ("%s: %s\r\n"):format(name, tostring(value))
    end
  end
  local bodyless = status < 200 or status == 204 or status == 304
  if not bodyless and not has_length then
    lines[#lines + 1] = ("Content-Length: %d\r\n"):format(#body)
  end
  lines[#lines + 1] = "Date: " .. http_date() .. "\r\n"
  if not keep_alive then
    lines[#lines + 1] = "Connection: close\r\n"
  elseif req and req.version == "1.0" then
    lines[#lines + 1] = "Connection: keep-alive\r\n"
  end
  lines[#lines + 1] = "\r\n"
  local deadline = self.loop:now() + self.idle_timeout
  local head = table.concat(lines)
  local send_body = not bodyless and #body > 0 and not (req and req.method == "HEAD")
  -- small bodies go with the head in one send; large ones are sent from the string itself
  if send_body and #body <= 16384 then
    head, send_body = head .. body, false
  end
  if not conn:send_all(head, deadline) then return false end
  if send_body and not conn:send_all(body, deadline) then return false end
  return keep_alive
end

function Server:answer_problem(conn, req, problem)
  local headers, body = self.error_body(problem.status, problem.message)
  self:write_response(conn, req, problem.status, headers, body, false)
end

-- Drains (and discards) what the client still sends for a short while after a refusal, so that
-- closing does not reset the connection before the client has read the answer.
function Server:linger(conn)
  conn.sock:shutdown("send")
  local deadline = self.loop:now() + LINGER
  local drained = 0
  while drained < 64 * 1024 * 1024 do
    conn.buf = ""
    local ok = conn:fill(deadline)
    if not ok then break end
    drained = drained + #conn.buf
  end
end

-- Calls the handler and waits for its answer (which may come later). Returns status, headers,
-- body, or nil to drop the connection.
function Server:dispatch(req)
  local loop = self.loop
  local answer, token
  local function respond(status, headers, body)
    if answer then return false end
    answer = { status = status, headers = headers, body = body }
    if token then loop:wake(token) end
    return true
  end
  local ok, err = pcall(self.handler, req, respond)
  if not ok then
    self.on_error(("handler error on %s %s: %s"):format(req.method, req.path, tostring(err)))
    local headers, body = self.error_body(500, "internal error")
    respond(500, headers, body)
  end
  if not answer then
    token = loop:token()
    loop:suspend()
  end
  return answer.status, answer.headers, answer.body
end

function Server:serve_connection(sock)
  local conn = setmetatable({ sock = sock, buf = "", eof = false, loop = self.loop }, Conn)
  local ok, err = pcall(function()
    while not self.closed do
      local deadline = self.loop:now() + self.idle_timeout
      local req, problem = self:read_head(conn, deadline)
      if not req then
        if problem then
          self:answer_problem(conn, nil, problem)
          if problem.status == 431 then self:linger(conn) end
        end
        return
      end
      local body_ok, body_problem = self:read_body(conn, req, deadline)
      if not body_ok then
        if body_problem then
          self:answer_problem(conn, req, body_problem)
          self:linger(conn)
        end
        return
      end
      local connection = (req.headers["connection"] or ""):lower()
      local keep_alive
      if req.version == "1.0" then
        keep_alive = connection:find("keep-alive", 1, true) ~= nil
      else
        keep_alive = connection:find("close", 1, true) == nil
      end
      -- a half-closed peer gets its answer, then the connection ends
      if conn.eof and #conn.buf == 0 then keep_alive = false end
      local status, headers, body = self:dispatch(req)
      if status == nil then return end
      if self.closed then return end
      if not self:write_response(conn, req, status, headers, body, keep_alive) then return end
    end
  end)
  if not ok then self.on_error("connection error: " .. tostring(err)) end
  self.conns[sock] = nil
  self.open = self.open - 1
  self.loop:forget(sock)
  sock:close()
end

return M
