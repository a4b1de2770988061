-- A buffered, non-blocking socket for coroutines of a dh3.emulator.loop: read a line, read n
-- bytes, send everything, each with an absolute deadline. Shared by the HTTP server and the
-- small HTTP client, so both parse with the same care.
local M = {}

local READ_CHUNK = 65536

local Stream = {}
Stream.__index = Stream

--- Wraps a connected luasocket TCP object (set to timeout 0 here).
function M.new(loop, sock)
  sock:settimeout(0)
  return setmetatable({ loop = loop, sock = sock, buf = "", eof = false }, Stream)
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
    if err == "timeout" then
      -- luasocket buffers internally: drain it before trusting select again
      if #parts > 0 then break end
      local ok, werr = self.loop:wait_readable(self.sock, deadline)
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
    if err == "timeout" then
      if have < n then
        local ok, werr = self.loop:wait_readable(self.sock, deadline)
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

--- Closes the socket, first waking anything still waiting on it.
function Stream:close()
  self.loop:forget(self.sock)
  self.sock:close()
end

return M
