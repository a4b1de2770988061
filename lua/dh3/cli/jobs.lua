-- The work of one command line run: a job per prompt or task id, each in its own coroutine of
-- one client, so that creates (paced by the client), polls and downloads of many tasks overlap.
-- Jobs tell a reporter (dh3.cli.terminal or dh3.cli.jsonlines) what happens, and end with an
-- exit code (dh3.cli.exitcode).
local core = require "dh3.core"
local exitcode = require "dh3.cli.exitcode"

local M = {}

local Job = {}
Job.__index = Job

--- A job from a prompt (`input` is the task input), from a task id, or from a task (`task`, one
-- of client:pending(), with its `prompt` when the journal knows it); `index` is its position on
-- the command line (or in the journal's pending list).
function M.new(index, fields)
  local job = setmetatable({ index = index, phase = "waiting" }, Job)
  for k, v in pairs(fields) do job[k] = v end
  return job
end

--- Seconds since the job started, frozen once it ended; `at` is the time now (default core.now()).
function Job:elapsed(at)
  if not self.started then return 0 end
  return (self.ended or at or core.now()) - self.started
end

local function fail(job, reporter, err, plan)
  job.err = err
  if plan.stopping and err.kind == "cancelled" then
    -- stopped by Ctrl-C: the run's end says what became of it, once, for every job
    job.code, job.phase = exitcode.INTERRUPTED, "stopped"
    return
  end
  job.code = exitcode.for_error(err)
  job.phase = err.kind == "task_failed" and "failed" or err.kind == "timeout" and "timeout" or "error"
  reporter:error(err, job)
end

-- Saves the images of a successful task where `plan.dest(task)` says.
local function download(job, plan, reporter)
  local task = job.task
  job.phase, job.bytes, job.total, job.download_started = "downloading", 0, 0, core.now()
  local paths, err = task:download(plan.dest(task), { progress = function(_, bytes, total)
    job.bytes, job.total = bytes, total
    reporter:progress(job)
  end })
  for i, path in ipairs(paths or err.paths or {}) do
    reporter:saved(job, path, task.images[i])
    job.saved_bytes = (job.saved_bytes or 0) + task.images[i].file_size
  end
  job.paths = paths or err.paths
  if not paths then return fail(job, reporter, err, plan) end
  job.phase, job.code = "saved", exitcode.OK
end

-- One job, start to end: create (or attach to an id), then as `plan` says: read the status once,
-- wait, download.
local function run_job(client, job, plan, reporter)
  job.started = core.now()
  local task, err
  if job.input then
    job.phase = "creating"
    task, err = client:create(job.input)
    if not task then return fail(job, reporter, err, plan) end
    job.task, job.phase = task, task.state
    -- with a journal, pending until its images are saved: a crash before then leaves it to resume
    if plan.dest and not plan.no_wait then task:_expect_download() end
    reporter:created(job)
    if plan.no_wait then
      job.phase, job.code = "created", exitcode.OK
      return
    end
  else
    task = job.task or client:task(job.id) -- a task of the journal (dh3 resume) comes ready
    job.task = task
  end
  if plan.status_only then
    job.phase = "reading"
    local state, serr = task:status()
    if not state then return fail(job, reporter, serr, plan) end
    job.phase, job.code, job.status_only = state, exitcode.OK, true
    job.summary = plan.summary(task)
    reporter:state(job)
    return
  end
  local ok, werr = task:wait{ timeout = plan.timeout, on_update = function(t)
    job.phase = t.state
    reporter:state(job)
  end }
  if not ok then return fail(job, reporter, werr, plan) end
  if not plan.dest then
    job.code = exitcode.OK
    return
  end
  download(job, plan, reporter)
end

--- Runs every job concurrently on `client` and returns the worst exit code, or nil when
-- plan.interrupted() said to stop (the jobs are then left as they are: see cli.lua).
-- plan: no_wait, status_only, timeout, dest (function(task) -> path; nil: do not download),
-- summary (function(task) -> text, for status), interrupted (function() -> true to stop),
-- stopping (set by the caller once it stops: cancelled jobs are then not reported one by one).
-- The reporter gets start(jobs), created/state/progress/saved/error(err, job)/finished(job),
-- and tick() every `redraw` seconds when `redraw` is given.
function M.run(client, jobs, plan, reporter, redraw)
  local left = #jobs
  reporter:start(jobs)
  for _, job in ipairs(jobs) do
    client:spawn(function()
      -- a bug of ours in one job must not hide the others' outcomes, nor lose their task ids
      local ok, trace = xpcall(run_job, debug.traceback, client, job, plan, reporter)
      if not ok then
        job.code, job.phase = exitcode.ERROR, "error"
        io.stderr:write("dh3: internal error: ", trace, "\n")
      end
      job.ended = core.now()
      left = left - 1
      reporter:finished(job)
    end)
  end
  if redraw then
    -- The only timer of the run: client:sleep yields here and keeps every transfer moving.
    client:spawn(function()
      while left > 0 do
        reporter:tick()
        client:sleep(redraw)
      end
    end)
  end
  -- the loop, with a look at `plan.interrupted()` (Ctrl-C) between turns: a wait in poll ends
  -- at the signal, so one turn is short
  local interrupted = plan.interrupted
  while client:update() > 0 do
    if interrupted and interrupted() then return nil end
    client:sleep(0.25)
  end
  local code = exitcode.OK
  for _, job in ipairs(jobs) do code = exitcode.worst(code, job.code or exitcode.ERROR) end
  return code
end

return M
