-- Every failure dh3 returns is one of these tables: {kind, message, http_status, code, task_id,
-- retryable, maybe_created, retry_after, curl_error}. This module is the one place where the C core's
-- facts (curl code, HTTP status, body) become a kind.
local core = require "dh3.core"
local compat = require "dh3.compat"

local M = {}

local Error = {}
Error.__index = Error
Error.__name = "dh3.error"

function Error:__tostring()
  local parts = { "dh3: ", self.kind, ": ", self.message }
  local facts = {}
  if self.http_status then facts[#facts + 1] = "HTTP " .. self.http_status end
  if self.code and self.code ~= self.http_status then facts[#facts + 1] = "code " .. tostring(self.code) end
  if self.curl_error then facts[#facts + 1] = "curl " .. self.curl_error end
  if self.task_id then facts[#facts + 1] = "task " .. self.task_id end
  if #facts > 0 then parts[#parts + 1] = " (" .. table.concat(facts, ", ") .. ")" end
  -- one line, whatever a server put in its message
  return (table.concat(parts):gsub("[%c]+", " "))
end

M.Error = Error

function M.is_error(v)
  return getmetatable(v) == Error
end

--- A new error of `kind`; `fields` may add http_status, code, task_id and the rest.
function M.new(kind, message, fields)
  local e = { kind = kind, message = message }
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  return setmetatable(e, Error)
end

--- The error of a wait or a read stopped by task:cancel() (the task itself goes on).
function M.cancelled(task_id)
  return M.new("cancelled", "cancelled by the caller; the task id is still valid", { task_id = task_id })
end

-- What a status number (HTTP or the body's code) means.
local KIND_BY_CODE = {
  [400] = "invalid_request", [422] = "invalid_request",
  [401] = "auth", [403] = "auth",
  [402] = "insufficient_credits",
  [404] = "not_found",
  [429] = "rate_limited",
}

function M.kind_for_code(code)
  if KIND_BY_CODE[code] then return KIND_BY_CODE[code] end
  if code >= 500 and code <= 599 then return "server" end
  -- the API does not redirect: a 3xx (never followed, so the key goes nowhere else) or another
  -- status outside 4xx breaks the contract
  if code < 400 or code > 499 then return "protocol" end
  return "invalid_request"
end

-- curl failures that happen before a single byte of the request can have reached the server.
local BEFORE_SENDING = {
  COULDNT_RESOLVE_HOST = true, COULDNT_RESOLVE_PROXY = true, COULDNT_CONNECT = true,
  UNSUPPORTED_PROTOCOL = true, URL_MALFORMAT = true,
}

-- curl failures that mean the server's certificate was refused (or the trust settings are
-- unusable): the TLS handshake failed, before any request was sent, and no retry changes that.
local CERTIFICATE_REFUSED = {
  PEER_FAILED_VERIFICATION = true, SSL_CACERT_BADFILE = true, SSL_CERTPROBLEM = true,
  SSL_ISSUER_ERROR = true, SSL_PINNEDPUBKEYNOTMATCH = true, SSL_INVALIDCERTSTATUS = true,
  SSL_CRL_BADFILE = true,
}

--- True when curl_error says the server's certificate was refused.
function M.certificate_refused(curl_error)
  return CERTIFICATE_REFUSED[curl_error] == true
end

--- True when a failed exchange certainly reached no server code (so a create made nothing).
function M.certainly_unsent(res)
  if BEFORE_SENDING[res.curl_error] or CERTIFICATE_REFUSED[res.curl_error] then return true end
  -- a connect or TLS handshake that timed out or failed had sent no request yet
  return (res.curl_error == "OPERATION_TIMEDOUT" or res.curl_error == "SSL_CONNECT_ERROR")
    and (res.request_size or 0) == 0
end

local function sanitize(s, max)
  s = tostring(s):gsub("[%c]+", " ")
  if #s > max then s = s:sub(1, max) .. "..." end
  return s
end
M.sanitize = sanitize

local type, is_integer, json_decode = type, compat.is_integer, core.json_decode

-- The C core joins curl's name for a failure and its detailed text: "Couldn't connect to server:
-- Failed to connect to h port 9 after 0 ms: Couldn't connect to server". Newer libcurl already
-- ends the detail with that name, which then reads twice: the detail alone says it all.
local function curl_message(message)
  local head, name, detail, tail = message:match("^(.-%()([^():]+): (.*)(%))$")
  if not head then
    head, tail = "", ""
    name, detail = message:match("^([^:]+): (.*)$")
    if not name then return message end
  end
  if detail == name then return head .. name .. tail end
  if detail:sub(-(#name + 2)) == ": " .. name then return head .. detail .. tail end
  return message
end

-- The message of an HTTP 3xx: the API never redirects, and dh3 never follows one.
local REDIRECTED = "the service redirected the request, and dh3 follows no redirect so that the API key "
  .. "goes to no other address: check base_url or DH3_BASE_URL"

--- The error of a transfer (an API call or a download) that did not complete: a local file that
-- could not be written (kind io), the connection (network, timeout), or more bytes than allowed,
-- or fewer than announced (protocol; `expected`, a download's announced size, names it). nil when
-- the transfer completed, whatever its HTTP status, which the caller reads. `what`, optional,
-- starts the message ("downloading URL"). The one place where a transfer's failure gets a kind.
function M.transfer_error(res, what, expected)
  local prefix = what and (what .. ": ") or ""
  local fields = { http_status = res.status ~= 0 and res.status or nil }
  if res.io_error then
    return M.new("io", prefix .. sanitize(res.io_error, 300), fields)
  end
  if res.curl_code ~= 0 and not res.too_large then
    -- whatever status line came before the failure, the answer never came whole
    local kind = res.curl_error == "OPERATION_TIMEDOUT" and "timeout" or "network"
    return M.new(kind, prefix .. sanitize(curl_message(res.message or res.curl_error), 200),
      { curl_error = res.curl_error })
  end
  if res.status < 200 or res.status > 299 then return nil end -- a refusal, with its own status
  if res.too_large or res.size_mismatch then
    if expected then
      return M.new("protocol", ("%sgot %d bytes, the service said %d"):format(prefix, res.bytes or 0, expected),
        fields)
    end
    return M.new("protocol", prefix .. "the answer is larger than the client accepts", fields)
  end
  return nil
end

--- Turns the C core's result for one API exchange into (document) or (nil, err).
-- The document is the decoded JSON object of a successful answer (body code 200).
function M.from_response(res)
  if res.curl_code ~= 0 or res.too_large then
    local err = M.transfer_error(res)
    if err then return nil, err end
  end
  local status = res.status
  local doc = res.body and json_decode(res.body)
  local code = type(doc) == "table" and is_integer(doc.code) and doc.code or nil
  if code == 200 and status >= 200 and status <= 299 then return doc end -- the common case, first

  local message = type(doc) == "table" and type(doc.message) == "string" and sanitize(doc.message, 300) or nil
  local retry_after = M.parse_retry_after(res.retry_after)

  if status < 200 or status > 299 then
    if status >= 300 and status <= 399 then message = REDIRECTED end
    return nil, M.new(M.kind_for_code(status), message or ("HTTP " .. status), {
      http_status = status, code = code, retry_after = retry_after,
    })
  end
  if type(doc) ~= "table" then
    return nil, M.new("protocol", "the answer is not a JSON object", { http_status = status })
  end
  if code == nil then
    return nil, M.new("protocol", "the answer has no numeric `code`", { http_status = status })
  end
  -- the service's other way of failing: HTTP 200 with the error only in the body
  return nil, M.new(M.kind_for_code(code), message or ("code " .. code), {
    http_status = status, code = code, retry_after = retry_after,
  })
end

-- RFC 9111 1.2.2: delta-seconds too large to represent count as 2^31. Without it, 309 digits made
-- math.huge (and 20 a float): found by fuzz/response.c, spec/fuzz_regressions_spec.lua.
local MAX_DELTA_SECONDS = 2147483648 -- 2^31, an integer on 5.3+

--- Retry-After in seconds, an integer (delta-seconds or an HTTP date), or nil.
function M.parse_retry_after(value)
  if not value then return nil end
  local digits = value:match("^%s*(%d+)%s*$")
  if digits then
    local n = compat.tointeger(tonumber(digits)) -- nil past 2^63 (past 2^53 below Lua 5.3)
    return n and math.min(n, MAX_DELTA_SECONDS) or MAX_DELTA_SECONDS
  end
  local at = core.parse_http_date(value)
  if at then return math.max(0, at - os.time()) end
  return nil
end

return M
