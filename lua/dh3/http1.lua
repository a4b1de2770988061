-- HTTP/1.1 message framing: the head (start line and header fields) and the body (Content-Length
-- or chunked). Shared by the webhook receiver's server (dh3.httpd, which parses from a buffer) and
-- the emulator's server and client (which read through a buffered stream of their own: read_head
-- and read_body take any object with its buf field and fill, read_line, read_exact, read_to_close
-- methods). It requires nothing. Failures carry the status a server would answer with, as
-- {status = n, message = "..."}.
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

M.TOKEN = "^[%w!#%$%%&'%*%+%.%^_`|~%-]+$"

local function problem(status, message)
  return nil, { status = status, message = message }
end
M.problem = problem

--- Reads a message head from stream (a buffered stream, see above) up to and including its blank line.
-- Blank lines before it are skipped (RFC 9112 2.2). Returns an array of lines without line ends;
-- or nil, problem; or nil, nil, err when nothing at all arrived ("timeout", "closed", ...).
function M.read_head(stream, max_header, deadline)
  while true do
    stream.buf = stream.buf:gsub("^[\r\n]+", "")
    local _, stop = stream.buf:find("\r?\n\r?\n")
    if stop then
      if stop > max_header then return problem(431, "header section too large") end
      local head = stream.buf:sub(1, stop)
      stream.buf = stream.buf:sub(stop + 1)
      local lines = {}
      for line in head:gmatch("([^\n]*)\n") do lines[#lines + 1] = line:gsub("\r$", "") end
      lines[#lines] = nil -- the blank line
      return lines
    end
    if #stream.buf > max_header then return problem(431, "header section too large") end
    local ok, err = stream:fill(deadline)
    if not ok then
      if #stream.buf == 0 then return nil, nil, err end
      if err == "timeout" then return problem(408, "incomplete message head") end
      return problem(400, "incomplete message head")
    end
  end
end

--- Header fields of lines[first..] as a table of lowercase name -> value (repeated fields joined
-- with ", "), or nil, problem.
function M.parse_headers(lines, first)
  local headers = {}
  for i = first, #lines do
    local line = lines[i]
    -- obsolete line folding (a line starting with space) is refused, as RFC 9112 allows
    local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if not name or not name:match(M.TOKEN) or value:find("[%z\r\n]") then
      return problem(400, "malformed header field")
    end
    name = name:lower()
    local old = headers[name]
    if old == nil then
      headers[name] = value
    elseif name == "content-length" then
      if old ~= value then return problem(400, "conflicting Content-Length") end
    else
      headers[name] = old .. ", " .. value
    end
  end
  return headers
end

--- A request's head, lines as read_head returns them: the request line and the header fields.
-- Returns req {method, target, path (raw, no query), query (raw, or nil), version ("1.1"),
-- headers}; or nil, problem. A target in absolute form (as sent to a proxy) names its path;
-- "OPTIONS *" is the one target without a leading "/".
function M.parse_request(lines)
  local method, target, major, minor = lines[1]:match("^(%S+) (%S+) HTTP/(%d)%.(%d)$")
  if not method or not method:match(M.TOKEN) then return problem(400, "malformed request line") end
  if major ~= "1" then return problem(505, "only HTTP/1.x is served") end
  local headers, hproblem = M.parse_headers(lines, 2)
  if not headers then return nil, hproblem end
  local path_query = target
  local after_authority = target:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]*(.*)$")
  if after_authority then path_query = after_authority ~= "" and after_authority or "/" end
  local path, query = path_query:match("^([^?#]*)%??([^#]*)")
  if path:sub(1, 1) ~= "/" and not (method == "OPTIONS" and target == "*") then
    return problem(400, "malformed request target")
  end
  return { method = method, target = target, path = path, query = query ~= "" and query or nil,
    version = major .. "." .. minor, headers = headers }
end

--- Whether the connection may serve another request after req: HTTP/1.1 unless the client said
-- "close", HTTP/1.0 only when it said "keep-alive".
function M.keep_alive(req)
  local connection = (req.headers["connection"] or ""):lower()
  if req.version == "1.0" then return connection:find("keep-alive", 1, true) ~= nil end
  return connection:find("close", 1, true) == nil
end

--- Whether a response with this status has no body (RFC 9110 6.4.1).
function M.bodyless(status)
  return status < 200 or status == 204 or status == 304
end

--- What a request's Expect field asks: true when the client holds its body back until it is told
-- "100 Continue" (framing: as framing() said), false when not; or nil, problem for another
-- expectation, which is not served.
function M.expects_continue(req, framing)
  local expect = req.headers["expect"]
  if not expect then return false end
  if expect:lower() ~= "100-continue" then return problem(417, "unsupported Expect") end
  return framing ~= 0 and req.version == "1.1"
end

--- The head of a response to req (nil: a refusal before any request was read). headers: the
-- handler's fields; Content-Length (body_length, unless the status has no body), Date and
-- Connection are the server's, and a handler's Connection: close ends the connection too.
-- Returns the head and whether the connection stays open.
function M.response_head(req, status, headers, body_length, keep_alive)
  local fields = {}
  for name, value in pairs(headers or {}) do
    local lname = name:lower()
    if lname == "connection" then
      if tostring(value):lower():find("close", 1, true) then keep_alive = false end
    elseif lname ~= "content-length" and lname ~= "date" then
      fields[name] = value
    end
  end
  if not M.bodyless(status) then fields["Content-Length"] = body_length end
  fields["Date"] = os.date("!%a, %d %b %Y %H:%M:%S GMT")
  if not keep_alive then
    fields["Connection"] = "close"
  elseif req and req.version == "1.0" then
    fields["Connection"] = "keep-alive"
  end
  return M.format_head(("HTTP/1.1 %d %s"):format(status, M.REASONS[status] or "Unknown"), fields), keep_alive
end

--- "http://HOST:PORT" (scheme "http" or "https"), an IPv6 host in brackets.
function M.url(scheme, host, port)
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  return ("%s://%s:%d"):format(scheme, host, port)
end

--- How the body of a message with these headers is framed: "chunked", a length (integer), or
-- nil, problem. until_close: what a response without either means (true for responses).
function M.framing(headers, until_close)
  local te, cl = headers["transfer-encoding"], headers["content-length"]
  if te then
    if cl then return problem(400, "both Transfer-Encoding and Content-Length") end
    if te:lower():match("([^,%s]+)%s*$") ~= "chunked" then
      return problem(501, "unsupported Transfer-Encoding")
    end
    return "chunked"
  end
  if cl then
    if not cl:match("^%d+$") or #cl > 15 then return problem(400, "malformed Content-Length") end
    return tonumber(cl)
  end
  return until_close and "close" or 0
end

local function read_chunked(stream, max_body, max_header, deadline)
  local parts, total = {}, 0
  while true do
    local line, err = stream:read_line(1024, deadline)
    if not line then return problem(err == "timeout" and 408 or 400, "chunked body: " .. err) end
    local hex = line:match("^(%x+)[ \t]*;?.*$")
    local size = hex and #hex <= 8 and tonumber(hex, 16)
    if not size then return problem(400, "chunked body: bad chunk size") end
    if size == 0 then break end
    total = total + size
    if total > max_body then return problem(413, "body too large") end
    local data, rerr = stream:read_exact(size, deadline)
    if not data then return problem(rerr == "timeout" and 408 or 400, "chunked body: " .. rerr) end
    parts[#parts + 1] = data
    if stream:read_line(0, deadline) ~= "" then
      return problem(400, "chunked body: no line end after a chunk")
    end
  end
  -- trailer fields are read and ignored, up to the blank line
  local trailer = 0
  while true do
    local line, err = stream:read_line(max_header, deadline)
    if not line then return problem(400, "chunked body: " .. err) end
    if line == "" then break end
    trailer = trailer + #line
    if trailer > max_header then return problem(431, "trailer section too large") end
  end
  return table.concat(parts)
end

--- Reads a body framed as framing() said. Returns the body (a string), or nil, problem.
-- Past max_body: a length or chunked body is refused with 413; a body read until close is cut.
function M.read_body(stream, framing, max_body, max_header, deadline)
  if framing == "chunked" then
    return read_chunked(stream, max_body, max_header, deadline)
  elseif framing == "close" then
    local body, err = stream:read_to_close(max_body, deadline)
    if not body then return problem(408, "body: " .. err) end
    return body
  elseif framing > max_body then
    return problem(413, "body too large")
  elseif framing == 0 then
    return ""
  end
  local body, err = stream:read_exact(framing, deadline)
  if not body then return problem(err == "timeout" and 408 or 400, "body: " .. err) end
  return body
end

--- A response or request head: start line, then fields (a table name -> value), then CRLF.
function M.format_head(start_line, fields)
  local out = { start_line, "\r\n" }
  for name, value in pairs(fields) do
    out[#out + 1] = name
    out[#out + 1] = ": "
    out[#out + 1] = tostring(value)
    out[#out + 1] = "\r\n"
  end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

return M
