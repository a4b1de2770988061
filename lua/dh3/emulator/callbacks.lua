-- Outgoing callbacks: when a task created with callback_url ends, POST the same document as
-- GET /api/v1/task/get would answer. Only HTTP 200 acknowledges. A failed attempt (another status,
-- no connection, no answer within callback_timeout) is retried at most 3 more times, after
-- callback_retry_delay seconds, then twice that, then four times that; then the delivery is
-- dropped. Each task's delivery is one coroutine in the emulator's loop, so slow or silent
-- receivers never hold up anything else.
local json = require "dh3.emulator.json"
local httpc = require "dh3.emulator.httpc"

local M = {}

M.MAX_ATTEMPTS = 4

-- What the stats log says about one attempt.
local function outcome_of(status, err)
  if status then return tostring(status) end
  if err == "timeout" or err == "refused" then return err end
  return "error"
end

--- Starts the delivery of task's callback (the task must have a callback_url).
function M.schedule(emu, task)
  local generation = emu.generation -- a reset abandons deliveries started before it
  local loop = emu.loop
  loop:spawn(function()
    while true do
      local now = loop:now()
      local state = emu.tasks:state(task, now)
      if state == "success" or state == "fail" then break end
      -- the end is known from the clock, except while an "auto" size is being read
      local wait = emu.tasks:ends_at(task) - now
      loop:sleep(task.size_pending and 0.05 or math.max(wait, 0.001))
      if emu.generation ~= generation then return end
    end
    local body = json.encode(emu.tasks:document(task, loop:now()))
    for attempt = 1, M.MAX_ATTEMPTS do
      local status, err = httpc.request(loop, {
        method = "POST", url = task.callback_url, body = body,
        headers = { ["Content-Type"] = "application/json" },
        timeout = emu.opts.callback_timeout, max_body = 64 * 1024,
      })
      if emu.generation ~= generation then return end
      local delivered = status == 200
      emu.stats:callback_attempt(task.id, attempt, outcome_of(status, err), delivered, loop:now())
      if emu.opts.log then
        emu:log("callback %s attempt %d: %s", task.id, attempt, outcome_of(status, err))
      end
      if delivered then return end
      if attempt == M.MAX_ATTEMPTS then
        emu.stats:callback_dropped()
        return
      end
      loop:sleep(emu.opts.callback_retry_delay * 2 ^ (attempt - 1))
      if emu.generation ~= generation then return end
    end
  end)
end

return M
