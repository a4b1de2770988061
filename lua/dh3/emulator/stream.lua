-- A buffered, non-blocking socket for coroutines of a dh3.emulator.loop: read a line, read n
-- bytes, send everything, each with an absolute deadline. Shared by the HTTP server and the
-- small HTTP client, so both parse with the same care. A stream may also carry TLS (starttls, with
-- luasec): luasec's sockets read and send like luasocket's, but say "wantread" or "wantwrite" where
-- luasocket says "timeout" (TLS may need to write in order to read, and the other way around).
local M = {}

local READ_CHUNK = 65536

local Stream = {}
Stream.__index = Stream

--- Wraps a connected luasocket TCP object (set to timeout 0 here).
function M.new(loop, sock)
  sock:settimeout(0)
  return setmetatable({ loop = loop, sock = sock, buf = "", eof = false }, Stream)
end

-- Whether err only means "not now", and what to wait for: the socket to become readable (true)
-- or writable (false); nil for a real error. `reading`: what a plain socket's timeout waits for.
local function again(err, reading)
  if err == "timeout" then return reading end
  if err == "wantread" then return true end
  if err == "wantwrite" then return false end
  return nil
end

-- Waits as again() said.
function Stream:wait(readable, deadline)
  if readable then return self.loop:wait_readable(self.sock, deadline) end
  return self.loop:wait_writable(self.sock, deadline)
end

--- Turns the stream into the server side of a TLS connection (ssl: luasec's module, ctx: a server
-- context), the handshake done without blocking the loop. true, or nil, err. The peer's address
-- is kept in self.peer (luasec's sockets cannot say it).
function Stream:starttls(ssl, ctx, deadline)
  local ip, port = self.sock:getpeername()
  self.peer = ip and (ip .. ":" .. tostring(port))
  local tls, err = ssl.wrap(self.sock, ctx) -- takes the descriptor over from the plain socket
  if not tls then return nil, err end
  self.sock, self.tls = tls, true
  tls:settimeout(0)
  while true do
    local ok, herr = tls:dohandshake()
    if ok then return true end
    local readable = again(herr, true)
    if readable == nil then return nil, herr end
    local waited, werr = self:wait(readable, deadline)
    if not waited then return nil, werr end
  end
end

--- Reads what is available, waiting until at least one byte arrives or the deadline passes.
-- Returns true, or nil and "timeout" | "closed" | a socket error. eof is set once the peer has
-- closed its side; what it sent before stays readable in buf.
function Stream:fill(deadline)
  if self.eof then return nil, "closed" end
  local parts = {}
  while true do
    local data, err, partial = self.sock:receive(READ_CHUNK)
    data = data or partial
    if data and #data > 0 then parts[#parts + 1] = data end
    local readable = again(err, true)
    if readable ~= nil then
      -- luasocket buffers internally: drain it before trusting select again
      if #parts > 0 then break end
      local ok, werr = self:wait(readable, deadline)
      if not ok then return nil, werr end
    elseif err then
      self.eof = true
      if #parts > 0 then break end
      return nil, err
    end
  end
  self.buf = self.buf .. table.concat(parts)
  return true
end

--- Exactly n bytes, or nil, err.
function Stream:read_exact(n, deadline)
  if #self.buf >= n then
    local s = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    return s
  end
  -- large bodies are gathered in a table: appending to one string would copy it each time
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
    local readable = again(err, true)
    if readable ~= nil then
      if have < n then
        local ok, werr = self:wait(readable, deadline)
        if not ok then return nil, werr end
      end
    elseif err then
      self.eof = true
      if have < n then return nil, err end
    end
  end
  return table.concat(parts)
end

--- Everything until the peer closes, at most limit bytes (more is read and dropped).
-- Returns the bytes and whether they were cut at limit.
function Stream:read_to_close(limit, deadline)
  local parts, have = { self.buf }, #self.buf
  self.buf = ""
  while not self.eof do
    local ok, err = self:fill(deadline)
    if not ok then
      if err == "timeout" then return nil, err end
      break
    end
    if have < limit then
      parts[#parts + 1] = self.buf
      have = have + #self.buf
    end
    self.buf = ""
    if have >= limit then break end
  end
  local s = table.concat(parts)
  return s:sub(1, limit), #s > limit
end

--- A line ending in LF, without its CR LF; at most limit bytes, else nil, "too long".
function Stream:read_line(limit, deadline)
  local from = 1
  while true do
    local i = self.buf:find("\n", from, true)
    if i then
      if i > limit + 2 then return nil, "too long" end
      local line = self.buf:sub(1, i - 1):gsub("\r$", "")
      self.buf = self.buf:sub(i + 1)
      return line
    end
    if #self.buf > limit + 2 then return nil, "too long" end
    from = #self.buf + 1
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

--- Sends all of data (sent straight from the string, never copied whole). true, or nil, err.
function Stream:send_all(data, deadline)
  local i, n = 1, #data
  while i <= n do
    local last, err, partial = self.sock:send(data, i)
    local readable = again(err, false)
    if last then
      i = last + 1
    elseif readable ~= nil then
      i = partial + 1
      if i <= n then
        local ok, werr = self:wait(readable, deadline)
        if not ok then return nil, werr end
      end
    else
      return nil, err
    end
  end
  return true
end

--- Closes the socket, first waking anything still waiting on it.
function Stream:close()
  self.loop:forget(self.sock)
  self.sock:close()
end

return M
