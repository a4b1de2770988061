-- The dh3 command line: generate, status, wait, download, emulator.
-- Exit codes: 0 success, 1 the task failed, 2 usage, 3 API or network error, 4 timeout.
local M = {}

M.EXIT = { ok = 0, task_failed = 1, usage = 2, error = 3, timeout = 4 }

local function build_parser(version)
  local argparse = require "argparse"
  local parser = argparse("dh3", "Generate images with the DH3 API (Nano Banana Pro).")
    :epilog("Environment: DH3_API_KEY (the key), DH3_BASE_URL (default https://api.dh3.app).\n"
      .. "Exit codes: 0 success, 1 the task failed, 2 usage, 3 API or network error, 4 timeout.")
  parser:flag("--version", "Print the version and exit."):action(function()
    print("dh3 " .. version)
    os.exit(0)
  end)
  parser:command_target("command")
  parser:require_command(true)

  local gen = parser:command("generate", "Create a task, wait for it and save its image.")
  gen:argument("prompt", "What to draw (3 to 20000 characters).")
  gen:option("--aspect-ratio", "1:1 2:3 3:2 3:4 4:3 4:5 5:4 9:16 16:9 21:9 auto", "1:1")
  gen:option("--resolution", "1K, 2K or 4K.", "1K")
  gen:option("--format", "png or jpg.", "png")
  gen:option("--image", "A reference image URL (up to 8)."):count("*")
  gen:option("--callback-url", "A URL the service POSTs the result to.")
  gen:option("--out", "Where to save: a folder or a file path.", ".")
  gen:flag("--no-wait", "Print the task id and exit without waiting.")
  gen:option("--timeout", "Seconds to wait for the task.", "600"):convert(tonumber)
  gen:flag("--json", "Machine-readable output: one JSON object a line.")

  for _, name in ipairs({ "status", "wait", "download" }) do
    local descr = ({ status = "Print a task's state.", wait = "Wait until a task ends.",
      download = "Save a finished task's images." })[name]
    local cmd = parser:command(name, descr)
    cmd:argument("id", "The task id.")
    if name ~= "status" then
      cmd:option("--timeout", "Seconds to wait for the task.", "600"):convert(tonumber)
    end
    if name == "download" then cmd:option("--out", "Where to save: a folder or a file path.", ".") end
    cmd:flag("--json", "Machine-readable output.")
  end

  local emu = parser:command("emulator", "Run dh3-emulator, the local double of the service.")
  emu:argument("flags", "dh3-emulator's own flags (see dh3 emulator -- --help)."):args("*")
  return parser
end

local Output = {}
Output.__index = Output

local function new_output(json)
  return setmetatable({ json = json, core = require "dh3.core" }, Output)
end

-- Everything printed goes through here: JSON lines with --json, readable lines otherwise.
function Output:event(kind, fields, text)
  if self.json then
    fields.event = kind
    io.stdout:write(assert(self.core.json_encode(fields)), "\n")
  elseif text then
    io.stdout:write(text, "\n")
  end
  io.stdout:flush()
end

function Output:fail(err)
  if self.json then
    self:event("error", { kind = err.kind, message = err.message, task_id = err.task_id,
      http_status = err.http_status, code = err.code })
  end
  io.stderr:write(tostring(err), "\n")
  if err.kind == "task_failed" then return M.EXIT.task_failed end
  if err.kind == "timeout" then return M.EXIT.timeout end
  if err.kind == "invalid_request" and not err.http_status then return M.EXIT.usage end
  return M.EXIT.error
end

local function wait_and_save(task, args, out, save)
  local ok, err = task:wait{ timeout = args.timeout, on_update = function(t)
    out:event("state", { task_id = t.id, state = t.state }, ("%s %s"):format(t.id, t.state))
  end }
  if not ok then return out:fail(err) end
  if not save then return M.EXIT.ok end
  local paths, derr = task:download(args.out)
  if not paths then return out:fail(derr) end
  for _, p in ipairs(paths) do out:event("saved", { task_id = task.id, path = p }, p) end
  return M.EXIT.ok
end

local commands = {}

function commands.generate(client, args, out)
  local input = {
    prompt = args.prompt, aspect_ratio = args.aspect_ratio, resolution = args.resolution,
    output_format = args.format, callback_url = args.callback_url,
    image_urls = #args.image > 0 and args.image or nil,
  }
  local task, err = client:create(input)
  if not task then return out:fail(err) end
  out:event("created", { task_id = task.id }, task.id)
  if args.no_wait then return M.EXIT.ok end
  return wait_and_save(task, args, out, true)
end

function commands.status(client, args, out)
  local task = client:task(args.id)
  local state, err = task:status()
  if not state then return out:fail(err) end
  out:event("state", { task_id = task.id, state = state, error = task.error }, state)
  return M.EXIT.ok
end

function commands.wait(client, args, out)
  return wait_and_save(client:task(args.id), args, out, false)
end

function commands.download(client, args, out)
  local task = client:task(args.id)
  local state, err = task:status()
  if not state then return out:fail(err) end
  return wait_and_save(task, args, out, true)
end

--- Runs the command line; returns the exit code.
function M.main(argv, version)
  local parser = build_parser(version)
  local ok, args = parser:pparse(argv)
  if not ok then
    io.stderr:write(parser:get_usage(), "\n\nError: ", args, "\n")
    return M.EXIT.usage
  end
  if args.command == "emulator" then
    return require("dh3.emulator").main(args.flags) or 0
  end
  local dh3 = require "dh3"
  local out = new_output(args.json)
  local client, err = dh3.new{}
  if not client then return out:fail(err) end
  if args.id and not require("dh3.validate").task_id(args.id) then
    io.stderr:write("dh3: not a task id: ", args.id, "\n")
    client:close()
    return M.EXIT.usage
  end
  local code = commands[args.command](client, args, out)
  client:close()
  return code
end

return M
