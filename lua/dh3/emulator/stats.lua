-- The emulator's counters, as served by GET /_emulator/stats: what tests assert on.
local json = require "dh3.emulator.json"

local M = {}

M.MAX_LOG = 1000 -- callback log entries kept (the newest)

local Stats = {}
Stats.__index = Stats

--- Fresh counters; started is the time "at" values count from. inflight: requests still being
-- handled (on a reset), so that their ends do not drive the gauge below zero.
function M.new(started, inflight)
  return setmetatable({
    started = started,
    requests = {},  -- "METHOD path" -> status string -> count
    creates = 0,
    callbacks = { attempts = 0, delivered = 0, failed = 0, dropped = 0, log = {} },
    faults = { ["5xx"] = 0, ["429"] = 0, drop = 0, malformed = 0, create_close = 0 },
    inflight = { now = inflight or 0, max = inflight or 0 },
    files_with_auth = 0,
  }, Stats)
end

--- Counts one answered request under endpoint ("GET /files", "other", ...) and status
-- (a number, or a word such as "dropped").
function Stats:request(endpoint, status)
  local by_status = self.requests[endpoint]
  if not by_status then
    by_status = {}
    self.requests[endpoint] = by_status
  end
  local key = tostring(status)
  by_status[key] = (by_status[key] or 0) + 1
end

function Stats:enter()
  local f = self.inflight
  f.now = f.now + 1
  if f.now > f.max then f.max = f.now end
end

function Stats:leave()
  self.inflight.now = self.inflight.now - 1
end

function Stats:fault(kind)
  self.faults[kind] = self.faults[kind] + 1
end

--- Records one callback attempt. outcome: the HTTP status as a string, "timeout", "refused" or
-- "error"; delivered: whether it was acknowledged.
function Stats:callback_attempt(task_id, attempt, outcome, delivered, at)
  local c = self.callbacks
  c.attempts = c.attempts + 1
  if delivered then c.delivered = c.delivered + 1 else c.failed = c.failed + 1 end
  c.log[#c.log + 1] = { task_id = task_id, attempt = attempt, outcome = outcome, at = at - self.started }
  if #c.log > M.MAX_LOG then table.remove(c.log, 1) end
end

function Stats:callback_dropped()
  self.callbacks.dropped = self.callbacks.dropped + 1
end

--- The stats document (JSON text). task_counts: state -> n; connections: {open, total}.
function Stats:encode(task_counts, connections)
  local c = self.callbacks
  return json.encode{
    requests = self.requests,
    creates = self.creates,
    tasks = task_counts,
    callbacks = {
      attempts = c.attempts, delivered = c.delivered, failed = c.failed, dropped = c.dropped,
      log = #c.log > 0 and c.log or json.EMPTY_ARRAY,
    },
    faults = self.faults,
    inflight = self.inflight,
    connections = connections,
    files_with_auth = self.files_with_auth,
  }
end

return M
