-- The dh3 command line (bin/dh3): turns arguments into jobs (dh3.cli.jobs) run concurrently on one
-- client, shown live on a terminal (dh3.cli.terminal) or as JSON lines (dh3.cli.jsonlines).
-- Grammar and help in dh3.cli.parser; exit codes in dh3.cli.exitcode.
local dh3 = require "dh3"
local core = require "dh3.core"
local errors = require "dh3.errors"
local validate = require "dh3.validate"
local exitcode = require "dh3.cli.exitcode"
local parser_mod = require "dh3.cli.parser"
local jobs_mod = require "dh3.cli.jobs"
local destination = require "dh3.cli.destination"
local format = require "dh3.cli.format"
local terminal = require "dh3.cli.terminal"
local jsonlines = require "dh3.cli.jsonlines"
local pending = require "dh3.cli.pending"

local M = {}

-- argparse reports a mistake by calling its parser's `error`, which prints and exits 1; ours
-- raises this instead, so that main prints the usage of the (sub)command at fault and returns 2.
local Usage = {}

local function usage_error(p, message)
  error(setmetatable({ parser = p, message = message }, Usage), 0)
end

local function report_usage(u, commands)
  local name = "dh3"
  for command_name, command in pairs(commands) do
    if command == u.parser then name = "dh3 " .. command_name end
  end
  io.stderr:write(u.parser:get_usage(), "\n\nError: ", u.message, "\nRun '", name, " --help' for more.\n")
  return exitcode.USAGE
end

-- The prompts of a --prompts file ("-": stdin): one a line, blank lines and # comments skipped.
-- Returns the list ({text, line}: line is its number in the file), or nil, message.
local function read_prompts(path)
  local f, err
  if path == "-" then
    f = io.stdin
  else
    f, err = io.open(path, "r")
    if not f then return nil, err end -- "PATH: No such file or directory"
  end
  local data, rerr = f:read("*a")
  if f ~= io.stdin then f:close() end
  if not data then return nil, ("%s: %s"):format(path == "-" and "stdin" or path, rerr) end -- a folder
  local prompts, n = {}, 0
  for line in (data .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    line = line:gsub("\r$", "")
    if line:find("%S") and not line:find("^%s*#") then prompts[#prompts + 1] = { text = line, line = n } end
  end
  return prompts
end

-- What `status` shows after the state on a terminal.
local function summary(task)
  if task.state == "fail" then return task.error end
  if task.state ~= "success" then return nil end
  local parts = {}
  for _, img in ipairs(task.images) do
    parts[#parts + 1] = ("%dx%d %s %s %s"):format(img.width, img.height, img.content_type or "?",
      format.bytes(img.file_size), img.url)
  end
  return table.concat(parts, "; ")
end

-- JSON lines unless a person is watching a terminal; the redraw period when one is.
local function new_reporter(json)
  if json or not terminal.is_terminal() then return jsonlines.new(), nil end
  return terminal.new(), terminal.REDRAW
end

-- The jobs of a `generate`: its prompts checked before anything is sent, so that a typo in a
-- file of prompts costs nothing. Returns jobs, or nil and the errors (one per refused prompt:
-- {err, job}). Each job's `body` is the create's wire body, which a rerun matches.
local function prompt_jobs(args, command)
  local prompts = {}
  for i, p in ipairs(args.prompt) do prompts[#prompts + 1] = { text = p, where = "prompt " .. i } end
  if args.prompts then
    local from_file, err = read_prompts(args.prompts)
    if not from_file then usage_error(command, "cannot read --prompts: " .. tostring(err)) end
    if #from_file == 0 and #prompts == 0 then
      usage_error(command, ("no prompt: --prompts %s has no prompt in it (only blank lines and # comments)")
        :format(args.prompts))
    end
    local name = args.prompts == "-" and "stdin" or args.prompts
    for _, p in ipairs(from_file) do
      prompts[#prompts + 1] = { text = p.text, line = p.line, where = ("--prompts %s line %d"):format(name, p.line) }
    end
  end
  if #prompts == 0 then usage_error(command, "no prompt: give PROMPT arguments or --prompts FILE") end
  local jobs, refused = {}, {}
  for i, p in ipairs(prompts) do
    local input = {
      prompt = p.text, aspect_ratio = args.aspect_ratio, resolution = args.resolution,
      output_format = args.format, callback_url = args.callback_url,
      image_urls = #args.image > 0 and args.image or nil,
    }
    jobs[i] = jobs_mod.new(i, { prompt = p.text, input = input, where = p.where, line = p.line })
    local body, err = validate.task_input(input, 1)
    jobs[i].body = body
    if err then refused[#refused + 1] = { err = err, job = jobs[i] } end
  end
  if #refused > 0 then return nil, refused end
  return jobs
end

-- A rerun with a journal: the jobs whose prompt and options (the whole wire body) made a task
-- whose images that journal has saved (and that are still there) are left out and said. Returns
-- the jobs left, and the skipped ones ({index, line, prompt, task_id, paths}).
local function skip_saved(jobs, journal)
  local saved = pending.saved_matcher(journal)
  local left, skipped = {}, {}
  for _, job in ipairs(jobs) do
    local t = saved(job.body)
    if t then
      skipped[#skipped + 1] = { index = job.index, line = job.line, prompt = job.prompt, task_id = t.task_id,
        paths = t.paths }
    else
      left[#left + 1] = job
    end
  end
  return left, skipped
end

local function id_jobs(args, command)
  local jobs = {}
  for i, id in ipairs(args.id) do
    if not validate.task_id(id) then usage_error(command, ("not a task id: '%s'"):format(id)) end
    jobs[i] = jobs_mod.new(i, { id = id })
  end
  return jobs
end

-- Runs the jobs. The first Ctrl-C stops the run the way client:close() does: the creates already
-- sent are let finish (their ids are paid for), everything else stops; then the ids still at work
-- at the service are said (with a journal they are in it too: `journal` is its path, and dh3
-- resume takes them up), and the creates whose answer never came (possibly created, id unknown).
-- A second Ctrl-C ends the process at once: only then can a create be cut off unanswered.
local function run(client, jobs, plan, reporter, redraw, journal)
  core.trap_interrupt()
  plan.interrupted = core.interrupted
  local code = jobs_mod.run(client, jobs, plan, reporter, redraw)
  if code then return code end
  plan.stopping = true
  local in_flight = 0
  for _ in pairs(client._creates) do in_flight = in_flight + 1 end
  io.stderr:write(("dh3: interrupted; %s (Ctrl-C again to quit at once)\n"):format(in_flight == 0
    and "stopping" or ("letting %d %s already sent bring %s id%s home"):format(in_flight,
      in_flight == 1 and "create" or "creates", in_flight == 1 and "its" or "their", in_flight == 1 and "" or "s")))
  client:close()
  reporter:close()
  local open, unanswered = {}, 0
  for _, job in ipairs(jobs) do
    if job.task and job.task.id and job.code ~= exitcode.OK and job.phase ~= "failed" then
      open[#open + 1] = job.task.id
    elseif job.err and job.err.maybe_created then
      unanswered = unanswered + 1
    end
  end
  local message = { "dh3: interrupted" }
  if #open > 0 then
    local how = journal and "dh3 resume --journal " .. journal or "dh3 wait ID"
    message[#message + 1] = "still running at the service (" .. how .. "): " .. table.concat(open, " ")
  end
  if unanswered > 0 then
    message[#message + 1] = ("%d %s with no answer, possibly created, id unknown%s"):format(unanswered,
      unanswered == 1 and "create" or "creates",
      journal and " (in the journal: dh3 pending --journal " .. journal .. ")" or "")
  end
  io.stderr:write(table.concat(message, "; "), "\n")
  return exitcode.INTERRUPTED
end

-- An error of the whole run (no key, a journal in use): reported, and its exit code.
local function run_error(reporter, err)
  reporter:error(err)
  reporter:close()
  return exitcode.for_error(err)
end

-- The run's client, or nil, err. The key is the environment's: the command line has no other
-- way to give one, so that is what a missing key's message names. The rows of `plan`'s jobs
-- learn from its hook when their status reads fail (see jobs.read_watcher).
local function new_client(journal, plan)
  local key = os.getenv("DH3_API_KEY")
  if key == nil or key == "" then
    return nil, errors.new("auth", "no API key: set DH3_API_KEY to your DH3 API key "
      .. "(with DH3_BASE_URL, the key of an emulator)")
  end
  plan.by_task = {}
  return dh3.new{ journal = journal, on_request = jobs_mod.read_watcher(plan.by_task) }
end

-- The end of a run that was not interrupted: its summary (how many saved, failed, not created,
-- skipped, ...), as a line on a terminal (for a run of several) or a "summary" event.
local function finish(reporter, jobs, skipped)
  local counts = jobs_mod.tally(jobs)
  counts.skipped = skipped and #skipped or 0
  reporter:summary(counts)
end

-- The journal pending and resume read: --journal or DH3_JOURNAL, and a file there.
local function required_journal(args, command)
  local path = pending.path(args.journal)
  if not path then usage_error(command, "no journal: give --journal PATH or set DH3_JOURNAL") end
  local missing = pending.missing(path)
  if missing then usage_error(command, missing) end
  return path
end

-- An error of `dh3 pending`: on stderr for a person, as a JSON line for a program; its exit code.
local function pending_error(err, human)
  if human then
    io.stderr:write(tostring(err), "\n")
    return exitcode.for_error(err)
  end
  return run_error(jsonlines.new(), err)
end

-- dh3 pending --forget LOCAL_ID...: each an unanswered create of the journal (else a usage error,
-- with nothing written), recorded as forgotten. The one case where pending writes: it takes the
-- journal's lock, as a run does.
local function forget(args, command, path, human)
  local journal, err = require("dh3.journal").open(path)
  if not journal then return pending_error(err, human) end
  local unanswered = {}
  for _, u in ipairs(journal:pending().unanswered) do unanswered[u.local_id] = u end
  for _, lid in ipairs(args.forget) do
    if not unanswered[lid] then
      journal:close()
      usage_error(command, ("no unanswered create of local id '%s' in %s (dh3 pending lists them)")
        :format(errors.sanitize(lid, 80), path))
    end
  end
  local lines = not human and jsonlines.new()
  for _, lid in ipairs(args.forget) do
    local ok, ferr = journal:forget(lid)
    if not ok then
      journal:close()
      return pending_error(ferr, human)
    end
    local prompt = pending.prompt(unanswered[lid].input)
    if lines then
      lines:emit("forgotten", { local_id = lid, prompt = prompt })
    else
      io.stdout:write(('Forgotten: local id %s, prompt %s. dh3 pending no longer lists it; its record stays '
        .. 'in the journal.\n'):format(lid, prompt and ('"' .. format.fit(prompt, 60) .. '"') or "unknown"))
    end
  end
  journal:close()
  return exitcode.OK
end

-- dh3 pending: the journal read, nothing sent (no key needed), nothing written (no lock: a run may
-- hold it); a torn end is said on stderr and left. With --forget, see forget().
local function list_pending(args, command)
  local path = required_journal(args, command)
  local human = not args.json and terminal.is_terminal()
  if #args.forget > 0 then return forget(args, command, path, human) end
  local state, err = pending.read(path)
  local torn = state and pending.torn_line(state, path)
  if torn then io.stderr:write(torn, "\n") end
  if not state then return pending_error(err, human) end
  if human then
    pending.print(io.stdout, state, path, (terminal.size()), os.time())
  else
    pending.emit(jsonlines.new(), state)
  end
  return exitcode.OK
end

-- dh3 resume: every task the journal has pending, waited on and saved as `dh3 download` does;
-- the creates with no answer said on stderr (nothing can take them up again).
local function resume(args, command)
  local path = required_journal(args, command)
  local reporter, redraw = new_reporter(args.json)
  -- the journal first: held by another run, nothing else happens (not even the --out folder)
  local plan = { timeout = args.timeout, summary = summary }
  local client, err = new_client(path, plan)
  if not client then return run_error(reporter, err) end
  -- the records themselves, for the prompts the rows show (client:pending() gives tasks by id)
  local state = client._journal:pending()
  if #state.tasks > 0 then
    local dest, derr = destination.prepare(args.out, true)
    if not dest then
      client:close()
      usage_error(command, derr)
    end
    plan.dest = dest
  end
  local tasks, unanswered = client:pending()
  for _, u in ipairs(unanswered) do reporter:unanswered(u) end
  local prompts = {}
  for _, t in ipairs(state.tasks) do prompts[t.task_id] = pending.prompt(t.input) end
  local jobs = {}
  for i, task in ipairs(tasks) do
    jobs[i] = jobs_mod.new(i, { id = task.id, task = task, prompt = prompts[task.id] })
  end
  local code = exitcode.OK
  if #jobs > 0 then
    plan.dest = plan.dest or assert(destination.new(args.out, true))
    code = run(client, jobs, plan, reporter, redraw, path)
    if code ~= exitcode.INTERRUPTED then finish(reporter, jobs) end
  elseif redraw and #unanswered == 0 then
    io.stdout:write("Nothing to resume in ", path, ".\n")
  end
  reporter:close()
  client:close()
  return code
end

local function execute(args, command)
  if args.command == "pending" then return list_pending(args, command) end
  if args.command == "resume" then return resume(args, command) end
  local jobs, refused
  local plan = { timeout = args.timeout, summary = summary }
  if args.command == "generate" then
    jobs, refused = prompt_jobs(args, command)
    plan.no_wait = args.no_wait
  else
    jobs = id_jobs(args, command)
    plan.status_only = args.command == "status"
  end
  local reporter, redraw = new_reporter(args.json)
  if refused then
    for _, r in ipairs(refused) do reporter:error(r.err, r.job) end
    reporter:close()
    return exitcode.USAGE
  end
  -- where the images go, checked before anything is sent: a typo must cost nothing
  if args.out and not plan.no_wait then
    local dest, err = destination.prepare(args.out, #jobs > 1, args.format)
    if not dest then usage_error(command, err) end
    plan.dest = dest
  end
  local journal = pending.path(args.journal)
  local skipped
  if args.command == "generate" and journal and not args.again then
    -- read before the client opens the journal: an open may compact it, which forgets them
    jobs, skipped = skip_saved(jobs, journal)
  end
  local client, err = new_client(journal, plan)
  if not client then return run_error(reporter, err) end
  if skipped then reporter:skipped(skipped, journal) end
  local code = exitcode.OK
  if #jobs > 0 then code = run(client, jobs, plan, reporter, redraw, journal) end
  if code ~= exitcode.INTERRUPTED then finish(reporter, jobs, skipped) end
  reporter:close()
  client:close()
  return code
end

-- Options that take a value, which may look like a negative number ("--timeout -5"): argparse
-- would read "-5" as an unknown option; joined as "--timeout=-5", its value is checked instead.
local VALUED = { ["--timeout"] = true, ["--out"] = true, ["--prompts"] = true, ["--image"] = true,
  ["--callback-url"] = true, ["--journal"] = true, ["--aspect-ratio"] = true, ["--resolution"] = true,
  ["--format"] = true, ["--forget"] = true }

local function join_negative_values(argv)
  local out, i = {}, 1
  while i <= #argv do
    local a, nxt = argv[i], argv[i + 1]
    if a == "--" then
      for j = i, #argv do out[#out + 1] = argv[j] end
      break
    end
    if VALUED[a] and nxt and nxt:find("^%-%.?%d") then
      out[#out + 1] = a .. "=" .. nxt
      i = i + 2
    else
      out[#out + 1] = a
      i = i + 1
    end
  end
  return out
end

--- Runs the command line `argv` (without the program name); returns the exit code.
function M.main(argv, version)
  local parser, commands = parser_mod.new(version)
  parser.error = usage_error
  local ok, result = pcall(function()
    local args = parser:parse(join_negative_values(argv))
    return execute(args, commands[args.command])
  end)
  if ok then return result end
  if getmetatable(result) == Usage then return report_usage(result, commands) end
  error(result, 0)
end

return M
