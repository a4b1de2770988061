-- A stand-in for the C engine, on a clock the spec drives: the logic above the engine (scheduler,
-- pacing, polling, waits, retries) runs in unit specs without sleeping and without a network.
--
--   local fake = require "helpers.fake_engine"
--   local engine = fake.new(function(req) return { status = 200, body = "{}", after = 0.5 } end)
--   local client = fake.client(engine)        -- a dh3 client on this engine and its clock
--   engine.t                                  -- the time now, in seconds; perform() moves it
--
-- The answer function sees each request's options (method, url, body, ...) and returns the
-- result's fields (status, body, curl_code, curl_error, message, ...) and `after`, the seconds
-- until it completes (0 by default); or nil to leave it in flight until cancelled.
local M = {}

local Engine = {}
Engine.__index = Engine

local Request = {}
Request.__index = Request

function Request:cancel()
  local engine = self.engine
  for i, r in ipairs(engine.inflight) do
    if r == self then
      table.remove(engine.inflight, i)
      self.cancelled = true
      return true
    end
  end
  return false
end

function Request:progress()
  return self.bytes or 0, self.total or 0
end

--- A fake engine whose requests `answer` decides. Its clock starts at 1000.
function M.new(answer)
  local engine = setmetatable({ t = 1000, inflight = {}, done = {}, answer = answer, sent = {},
    performs = 0, closed = false }, Engine)
  engine.now = function() return engine.t end
  return engine
end

function Engine:request(opts)
  assert(not self.closed, "request on a closed engine")
  local req = setmetatable({ engine = self, context = opts.context, method = opts.method, url = opts.url,
    body = opts.body, download_to = opts.download_to }, Request)
  local result = self.answer(req)
  self.sent[#self.sent + 1] = req
  if result then
    result.request = req
    result.status = result.status or 200
    result.curl_code = result.curl_code or 0
    result.ok = result.curl_code == 0
    result.time = result.time or result.after or 0
    req.result, req.due = result, self.t + (result.after or 0)
  end
  self.inflight[#self.inflight + 1] = req
  return req
end

-- The request in flight that completes first, and its index.
function Engine:_first_due()
  local best, index
  for i, r in ipairs(self.inflight) do
    if r.due and (not best or r.due < best.due) then best, index = r, i end
  end
  return best, index
end

--- Moves the clock by at most `wait` (0: not at all), stopping early at the first completion,
-- as the real perform returns when a transfer ends. Returns the transfers still in flight.
function Engine:perform(wait)
  self.performs = self.performs + 1
  wait = wait or 0
  local r, i = self:_first_due()
  if r and r.due <= self.t + wait then
    if r.due > self.t then self.t = r.due end
    table.remove(self.inflight, i)
    self.done[#self.done + 1] = r
    -- everything else due by now completes in the same turn
    while true do
      r, i = self:_first_due()
      if not (r and r.due <= self.t) then break end
      table.remove(self.inflight, i)
      self.done[#self.done + 1] = r
    end
  else
    self.t = self.t + wait
  end
  return #self.inflight, false
end

function Engine:next_done()
  local r = table.remove(self.done, 1)
  if not r then return nil end
  return r.result, r.context
end

function Engine:pending()
  return #self.inflight, #self.done
end

function Engine:close()
  self.closed = true
  self.inflight, self.done = {}, {}
end

--- Requests sent whose method and URL path match (`path` a plain substring), in order.
function Engine:requests(method, path)
  local list = {}
  for _, r in ipairs(self.sent) do
    if r.method == method and r.url:find(path, 1, true) then list[#list + 1] = r end
  end
  return list
end

--- A dh3 client on `engine` and its clock; `opts` adds to dh3.new's options.
function M.client(engine, opts)
  local o = { api_key = "k", base_url = "http://dh3.invalid" }
  for k, v in pairs(opts or {}) do o[k] = v end
  local dh3 = require "dh3"
  return assert(require("dh3.client").new(o, dh3.VERSION, { engine = engine, now = engine.now }))
end

--- The service's answer to a create: a new id (32 hex digits from `n`).
function M.created(n, after)
  return { body = ('{"code":200,"message":"ok","task_id":"%032x"}'):format(n), after = after }
end

--- The service's answer to a status read of `id` in `state` (success: one 1024x1024 PNG).
function M.status(id, state, after)
  local images = state == "success" and (',"images":[{"url":"http://files.invalid/%s.png","content_type":'
    .. '"image/png","file_name":"%s.png","file_size":"1000","width":"1024","height":"1024"}]'):format(id, id) or ""
  local err = state == "fail" and ',"err_msg":"Upstream model error"' or ""
  return { body = ('{"code":200,"message":"ok","nano_banana_pro_output":{"task_id":"%s","status":"%s"%s%s}}')
    :format(id, state, images, err), after = after }
end

return M
