-- Which failures are worth another attempt, and how long to wait before it.
-- A status read is idempotent: retry what may be passing. A create costs money and has no
-- idempotency key: retry it only when the failure proves that nothing was created.
local errors = require "dh3.errors"

local M = {}

local MAX_DELAY = 30 -- seconds: no back-off step is longer, unless the server asks (Retry-After)

local RETRYABLE_READ = { network = true, timeout = true, rate_limited = true, server = true, protocol = true }

-- A redirect is never followed (the key must not travel to another host) and asking again meets
-- the same redirect; the server that sent it did not act on the request.
local function redirected(err)
  return err.http_status and err.http_status >= 300 and err.http_status <= 399
end

--- For a failed status read.
function M.read_retryable(err)
  if errors.certificate_refused(err.curl_error) or redirected(err) then return false end
  return RETRYABLE_READ[err.kind] == true
end

--- For a failed create: (retryable, maybe_created).
function M.create_retryable(err, res)
  local number = err.code or err.http_status
  -- a refused certificate stays refused; and the handshake failed before anything was sent
  if errors.certificate_refused(res.curl_error) or redirected(err) then return false, false end
  if err.kind == "rate_limited" then return true, false end
  -- 503 is the service's "unavailable, nothing created" answer
  if err.kind == "server" and number == 503 then return true, false end
  if err.kind == "network" or err.kind == "timeout" then
    if errors.certainly_unsent(res) then return true, false end
    return false, true
  end
  -- an answer we cannot read, or a server error after the request arrived: it may have been made
  if err.kind == "protocol" or err.kind == "server" then return false, true end
  return false, false
end

-- A Retry-After longer than this is not waited out inside one call: the error goes back to the
-- caller (with err.retry_after), who can decide; a blocked create would otherwise hang for it.
M.MAX_RETRY_AFTER = 120

--- Seconds to wait before attempt `attempt + 1`: exponential from `base`, with jitter (half fixed,
-- half random, so that many clients do not retry in step), and never less than Retry-After.
-- nil when the server asks for longer than MAX_RETRY_AFTER.
function M.backoff(attempt, base, retry_after)
  if retry_after and retry_after > M.MAX_RETRY_AFTER then return nil end
  local step = math.min(MAX_DELAY, base * 2 ^ (attempt - 1))
  local delay = step / 2 + math.random() * step / 2
  if retry_after and retry_after > delay then delay = retry_after end
  return delay
end

return M
