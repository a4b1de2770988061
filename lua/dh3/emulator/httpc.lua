-- A small non-blocking HTTP/1.1 client for coroutines of a dh3.emulator.loop: one request per
-- connection (Connection: close), plain http only. The emulator uses it to POST callbacks and to
-- read the head of reference images, without ever stalling the connections it serves.
--
--   local status, headers, body = httpc.request(loop, {method = "POST", url = "http://...",
--     headers = {["Content-Type"] = "application/json"}, body = "{}", timeout = 5})
--   -- or nil, err: "timeout" | "refused" (no connection) | "unsupported" (not http://) | a message
local socket = require "socket"
local stream = require "dh3.emulator.stream"
local http1 = require "dh3.http1"

local M = {}

local DEFAULT_PORTS = { http = 80, https = 443 }

--- Splits an http URL into host, port, path-and-query, scheme; nil for anything else. With
-- `https` true, https URLs are split too (requests only speak http).
function M.parse_url(url, https)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and scheme:lower()
  if not (scheme == "http" or (https and scheme == "https")) then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  authority = authority:gsub("^.*@", "") -- user info is not ours to send
  local host, port = authority:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil end
  port = port ~= "" and tonumber(port) or DEFAULT_PORTS[scheme]
  path = path:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  return host, port, path, scheme
end

--- True for a host that needs no DNS lookup (an IP literal or localhost): name resolution in
-- luasocket blocks the whole loop, so callers may choose to avoid it.
function M.is_literal_host(host)
  return host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:find(":", 1, true) ~= nil
    or host:lower() == "localhost"
end

-- Connects without blocking (DNS excepted). Returns a stream, or nil, err.
local function connect(loop, host, port, deadline)
  local sock = host:find(":", 1, true) and socket.tcp6() or socket.tcp()
  if not sock then return nil, "refused" end
  sock:settimeout(0)
  local ok, err = sock:connect(host, port)
  if not ok and err == "timeout" then
    local ready, werr = loop:wait_writable(sock, deadline)
    if not ready then
      loop:forget(sock)
      sock:close()
      return nil, werr
    end
    -- asking again tells how the pending connect ended
    ok, err = sock:connect(host, port)
    if not ok and err == "already connected" then ok = true end
  end
  if not ok then
    sock:close()
    return nil, "refused"
  end
  return stream.new(loop, sock)
end

--- opts: method ("GET"), url, headers (table), body (string), timeout (seconds, for the whole
-- exchange; 10), max_body (bytes kept of the answer; more is dropped; 1 MiB).
-- Returns status (integer), headers (lowercase names), body; or nil, err.
function M.request(loop, opts)
  local host, port, path = M.parse_url(opts.url)
  if not host then return nil, "unsupported" end
  local deadline = loop:now() + (opts.timeout or 10)
  local conn, err = connect(loop, host, port, deadline)
  if not conn then return nil, err end

  local body = opts.body or ""
  local fields = {
    ["Host"] = (host:find(":", 1, true) and "[" .. host .. "]" or host) .. (port ~= 80 and ":" .. port or ""),
    ["User-Agent"] = "dh3-emulator",
    ["Connection"] = "close",
  }
  for name, value in pairs(opts.headers or {}) do fields[name] = value end
  if #body > 0 or opts.method == "POST" or opts.method == "PUT" then fields["Content-Length"] = #body end
  local head = http1.format_head(("%s %s HTTP/1.1"):format(opts.method or "GET", path), fields)

  local function finish(...)
    conn:close()
    return ...
  end
  local ok, serr = conn:send_all(head .. body, deadline)
  if not ok then return finish(nil, serr == "timeout" and "timeout" or "connection " .. tostring(serr)) end

  local status, headers
  repeat -- interim 1xx answers are skipped
    local lines, problem, rerr = http1.read_head(conn, 64 * 1024, deadline)
    if not lines then
      if rerr == "timeout" or (problem and problem.status == 408) then return finish(nil, "timeout") end
      return finish(nil, problem and problem.message or "connection " .. tostring(rerr))
    end
    status = tonumber(lines[1]:match("^HTTP/1%.%d (%d%d%d)"))
    if not status then return finish(nil, "malformed status line") end
    headers = http1.parse_headers(lines, 2)
    if not headers then return finish(nil, "malformed header field") end
  until status >= 200

  local max_body = opts.max_body or 1024 * 1024
  if opts.method == "HEAD" or status == 204 or status == 304 then return finish(status, headers, "") end
  local framing = http1.framing(headers, true)
  if not framing then return finish(nil, "malformed body framing") end
  if framing ~= "chunked" and framing ~= "close" and framing > max_body then
    -- keep only what was asked for: enough to sniff an image's size
    framing = "close"
  end
  local data, problem = http1.read_body(conn, framing, max_body, 64 * 1024, deadline)
  if not data then
    if problem.status == 408 then return finish(nil, "timeout") end
    if problem.status == 413 then return finish(status, headers, "") end
    return finish(nil, problem.message)
  end
  return finish(status, headers, data)
end

return M
