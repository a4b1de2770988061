-- Machine-readable output: one JSON object a line on stdout, flushed at once so that a reader
-- sees each event as it happens. Every object has "event" first (easy to grep) and "index", the
-- 1-based position of its prompt or id on the command line (or in --prompts), to match results
-- to inputs. Errors are also written to stderr, one line each, for the person behind the script.
local core = require "dh3.core"
local pending = require "dh3.cli.pending"
local jobs = require "dh3.cli.jobs"

local M = {}

local Lines = {}
Lines.__index = Lines

--- out and err: files (io.stdout and io.stderr by default).
function M.new(out, err)
  return setmetatable({ out = out or io.stdout, err = err or io.stderr }, Lines)
end

local function round(seconds)
  return math.floor(seconds * 1000 + 0.5) / 1000
end

-- {"event":NAME, ...fields}: the encoder does not keep key order, so "event" is put first by hand.
function Lines:emit(event, fields)
  local rest = assert(core.json_encode(fields))
  local line = '{"event":' .. assert(core.json_encode(event))
    .. (rest == "{}" and "}" or "," .. rest:sub(2))
  self.out:write(line, "\n")
  self.out:flush()
end

function Lines:start() end

function Lines:created(job)
  self:emit("created", { index = job.index, task_id = job.task.id, prompt = job.prompt, state = job.task.state })
end

function Lines:state(job)
  local task = job.task
  self:emit("state", {
    index = job.index, task_id = task.id, state = task.state, elapsed = round(job:elapsed()),
    images = job.status_only and task.images or nil,
    error = task.error,
  })
end

function Lines:progress() end -- bytes are reported once saved: a line per chunk helps no one

function Lines:saved(job, path, image)
  self:emit("saved", {
    index = job.index, task_id = job.task.id, path = path, bytes = image.file_size,
    width = image.width, height = image.height, content_type = image.content_type,
  })
end

--- An error, of a task (job) or of the whole run.
function Lines:error(err, job)
  self:emit("error", {
    index = job and job.index, line = job and job.line, task_id = err.task_id or (job and job.task and job.task.id),
    kind = err.kind, message = err.message, http_status = err.http_status, code = err.code,
    maybe_created = err.maybe_created,
  })
  self.err:write(jobs.error_line(err, job), "\n")
end

--- Prompts not created again: the journal has their images saved (`list`: {index, line, prompt,
-- task_id, paths}...). One event each.
function Lines:skipped(list)
  for _, s in ipairs(list) do
    self:emit("skipped", { index = s.index, line = s.line, prompt = s.prompt, task_id = s.task_id, paths = s.paths })
  end
end

--- The run's end: how many tasks came to each outcome (dh3.cli.jobs.tally, plus skipped).
function Lines:summary(counts)
  self:emit("summary", counts)
end

--- A create of the journal whose answer never came (dh3 resume): an event, and the line on stderr.
function Lines:unanswered(u)
  self:emit("unanswered", pending.unanswered_fields(u))
  self.err:write(pending.unanswered_line(u), "\n")
end

function Lines:finished() end

function Lines:close() end

return M
