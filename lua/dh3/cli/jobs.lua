-- The work of one command line run: a job per prompt or task id, each in its own coroutine of
-- one client, so that creates (paced by the client), polls and downloads of many tasks overlap.
-- Jobs tell a reporter (dh3.cli.terminal or dh3.cli.jsonlines) what happens, and end with an
-- exit code (dh3.cli.exitcode).
local core = require "dh3.core"
local compat = require "dh3.compat"
local exitcode = require "dh3.cli.exitcode"
local format = require "dh3.cli.format"

local M = {}

local Job = {}
Job.__index = Job

--- A job from a prompt (`input` is the task input; `where` says where the prompt came from, as
-- "prompt 2" or "--prompts FILE line 5", and `line` its line in that file), from a task id, or
-- from a task (`task`, one of client:pending(), with its `prompt` when the journal knows it);
-- `index` is its position on the command line (or in the journal's pending list).
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

local PROMPT_SHOWN = 40 -- characters of a prompt in an error line: enough to recognise it

--- The stderr line for `err`, of `job` when given. The error of a prompt that has no task (refused
-- before sending, or a create that failed) names the prompt, by its place and its first words:
-- there is no task id to tell which one it was.
function M.error_line(err, job)
  local line = tostring(err)
  if job and job.where and not (job.task and job.task.id) then
    line = ('dh3: %s "%s": %s'):format(job.where, format.fit(job.prompt or "", PROMPT_SHOWN), (line:gsub("^dh3: ", "")))
  end
  return line
end

--- What became of a job, in a word: saved, succeeded (waited on, nothing to save), created
-- (--no-wait), read (status), failed (the service ended it in fail), timeout, not_created (its
-- create failed, or was refused), stopped (Ctrl-C), error (anything else: a failed read or save).
function M.outcome(job)
  if job.phase == "saved" then return "saved" end
  if job.code == exitcode.OK then
    return job.status_only and "read" or job.phase == "created" and "created" or "succeeded"
  end
  if job.input and not job.task then return "not_created" end
  if job.phase == "failed" or job.phase == "timeout" or job.phase == "stopped" then return job.phase end
  return "error"
end

M.OUTCOMES = { "saved", "succeeded", "created", "read", "failed", "timeout", "not_created", "stopped", "error" }

--- How many jobs came to each outcome: {tasks = #jobs, saved = n, ...} (every outcome, 0 too).
function M.tally(jobs)
  local counts = { tasks = #jobs }
  for _, name in ipairs(M.OUTCOMES) do counts[name] = 0 end
  for _, job in ipairs(jobs) do
    local name = M.outcome(job)
    counts[name] = counts[name] + 1
  end
  return counts
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

--- The client's on_request hook for a run: each status read of a job's task sets the job's
-- `read_error` to the kind of its failure, or clears it, so that a row can say that reads are
-- failing and being tried again (a wait goes on through an outage until its deadline).
-- `by_task`: {[task id] = job}, filled as the jobs' tasks become known.
function M.read_watcher(by_task)
  return function(info)
    if info.method ~= "GET" or not info.task_id then return end
    local job = by_task[info.task_id]
    if job then job.read_error = info.error end
  end
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
    if plan.by_task then plan.by_task[task.id] = job end
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
    if plan.by_task then plan.by_task[task.id] = job end
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
-- by_task (a table the jobs enter themselves in by task id, for M.read_watcher),
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
      -- compat.coxpcall: the job waits (yields) inside, which plain Lua 5.1's xpcall cannot carry
      local ok, trace = compat.coxpcall(run_job, debug.traceback, client, job, plan, reporter)
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
