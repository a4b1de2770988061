-- Tasks and their clock. A task's state is never stored: it is computed from the time elapsed
-- since its creation (queue_time, then process_time, then its outcome, decided at creation), so
-- reading a task needs no timer. Only callbacks need the loop to notice an end.
--
-- Prompt markers force what a test needs (a marker's text stays part of the prompt):
--   {emu:fail}            the task fails, err_msg "Upstream model error"
--   {emu:fail=MESSAGE}    the task fails with err_msg MESSAGE (no "}" inside)
--   {emu:success}         the task succeeds whatever --fail-rate says
--   {emu:queue=S}         this task queues for S seconds (instead of --queue-time)
--   {emu:process=S}       this task processes for S seconds (instead of --process-time)
--   {emu:file_name=NAME}  its image's file_name is NAME (no "}" inside; the URL stays the
--                         emulator's own), for testing what a client does with the names it gets
-- When markers contradict each other, the last one wins.
local contract = require "dh3.contract"
local images = require "dh3.emulator.images"
local reference = require "dh3.emulator.reference"

local M = {}

M.DEFAULT_ERROR = "Upstream model error"

M.MARKERS_HELP = [[
Prompt markers (for tests; the last of contradicting markers wins):
  {emu:fail}           force the task to fail with err_msg "Upstream model error"
  {emu:fail=MESSAGE}   force it to fail with err_msg MESSAGE
  {emu:success}        force success whatever --fail-rate says
  {emu:queue=S}        queue this task for S seconds instead of --queue-time
  {emu:process=S}      process it for S seconds instead of --process-time
  {emu:file_name=NAME} name its image NAME in the answer (file_name), for tests]]

--- The markers in a prompt: {outcome = "fail" | "success" | nil, err_msg, queue, process,
-- file_name}.
function M.parse_markers(prompt)
  local m = {}
  for name, eq, value in prompt:gmatch("{emu:([%a_]+)(=?)([^}]*)}") do
    if name == "fail" then
      m.outcome = "fail"
      m.err_msg = (eq == "=" and value ~= "") and value or M.DEFAULT_ERROR
    elseif name == "success" and eq == "" then
      m.outcome, m.err_msg = "success", nil
    elseif (name == "queue" or name == "process") and eq == "=" then
      local seconds = tonumber(value)
      if seconds and seconds >= 0 and seconds < math.huge then m[name] = seconds end
    elseif name == "file_name" and eq == "=" then
      m.file_name = value
    end
  end
  return m
end

local Store = {}
Store.__index = Store

--- A task store for emulator emu (its opts, rng streams, image cache, loop and public_url).
function M.new(emu)
  return setmetatable({ emu = emu, by_id = {} }, Store)
end

function Store:clear()
  self.by_id = {}
end

function Store:find(id)
  return self.by_id[id]
end

--- Creates a task for key from a checked input (wire names) at time now.
function Store:create(key, input, callback_url, now)
  local emu, opts = self.emu, self.emu.opts
  local markers = M.parse_markers(input.prompt)
  -- one draw per create, used or not, so that markers never shift the seeded sequence
  local failed = emu.rng.outcomes:float() < opts.fail_rate
  local outcome = markers.outcome or (failed and "fail" or "success")
  local resolution = input.resolution or contract.DEFAULTS.resolution
  local task = {
    id = emu.rng.ids:hex128(),
    key = key,
    created = now,
    queue_time = markers.queue or opts.queue_time,
    process_time = markers.process or opts.process_time,
    outcome = outcome,
    err_msg = outcome == "fail" and (markers.err_msg or M.DEFAULT_ERROR) or nil,
    format = input.output_format or contract.DEFAULTS.output_format,
    resolution = resolution,
    palette = images.palette(emu.rng.colours),
    callback_url = callback_url,
    file_name = markers.file_name,
  }
  local ratio = input.aspect_ratio or contract.DEFAULTS.aspect_ratio
  if ratio == "auto" then
    -- the model follows the first reference image's shape; without one, or unreadable: 1:1
    local first = input.image_urls and input.image_urls[1]
    if first then
      ratio = reference.ratio(emu, first, function(found)
        task.ratio = found
        task.width, task.height = contract.size(found, resolution)
        task.size_pending = nil
      end)
      if not ratio then task.size_pending = true end
    else
      ratio = "1:1"
    end
  end
  if ratio then
    task.ratio = ratio
    task.width, task.height = contract.size(ratio, resolution)
  end
  self.by_id[task.id] = task
  return task
end

--- When the task's clock ends (it may still wait on its reference image's size).
function Store:ends_at(task)
  return task.created + task.queue_time + task.process_time
end

--- "queuing" | "processing" | "success" | "fail" at time now.
function Store:state(task, now)
  local elapsed = now - task.created
  if elapsed < task.queue_time then return "queuing" end
  -- a task whose "auto" size is still being read is not done: its image has no size yet
  if elapsed < task.queue_time + task.process_time or task.size_pending then return "processing" end
  return task.outcome
end

--- Tasks by state at time now: {queuing = n, processing = n, success = n, fail = n}.
function Store:counts(now)
  local counts = { queuing = 0, processing = 0, success = 0, fail = 0 }
  for _, task in pairs(self.by_id) do
    local s = self:state(task, now)
    counts[s] = counts[s] + 1
  end
  return counts
end

--- The path of a task's image under /files/.
function Store:file_path(task)
  return task.id .. "." .. task.format
end

--- The task's image bytes (rendered once, then cached).
function Store:image(task)
  local key = ("%s %dx%d %d"):format(task.format, task.width, task.height, task.palette.hue)
  local bytes = self.emu.cache:get(key, function()
    return images.render(task.format, task.width, task.height, task.palette)
  end)
  task.file_size = #bytes
  return bytes
end

--- The task as the service reports it: the whole GET answer, also the callback body.
function Store:document(task, now)
  local state = self:state(task, now)
  local output = { task_id = task.id, status = state }
  if state == "success" then
    local name = self:file_path(task)
    local size = task.file_size or #self:image(task)
    output.images = { {
      url = self.emu.public_url .. "/files/" .. name,
      content_type = images.CONTENT_TYPES[task.format],
      file_name = task.file_name or name,
      file_size = tostring(size),
      width = tostring(task.width),
      height = tostring(task.height),
    } }
  elseif state == "fail" then
    output.err_msg = task.err_msg
  end
  return { code = 200, message = "Ok", nano_banana_pro_output = output }
end

return M
