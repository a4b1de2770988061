-- The command line's grammar: commands, flags, and the help text of each, on lua-argparse (the only
-- place that loads it, so the library itself never needs it).
local contract = require "dh3.contract"
local exitcode = require "dh3.cli.exitcode"

local M = {}

local ENVIRONMENT = [[
Environment:
   DH3_API_KEY    the API key (required; never printed)
   DH3_BASE_URL   the service (default https://api.dh3.app), e.g. a dh3-emulator's URL
   DH3_JOURNAL    the journal when --journal is not given (empty: none)]]

local OUTPUT = [[
Output: on a terminal, one live row per task (state and elapsed time while waiting, a progress
bar with size and speed while downloading); errors go to stderr. With --json, or when stdout is
not a terminal, stdout carries JSON lines only (one event object a line: created, state, saved,
error; see README.md), and errors are also written to stderr as one line each.]]

-- Every command's help ends with what a script needs: exit codes and environment.
local EPILOG = OUTPUT .. "\n\n" .. exitcode.HELP .. "\n\n" .. ENVIRONMENT

-- argparse's convert: a finite number of seconds above zero, or nil and why.
local function seconds(s)
  local n = tonumber(s)
  if n and n > 0 and n < math.huge then return n end
  return nil, "must be a positive number of seconds, got '" .. s .. "'"
end

local function add_wait_options(cmd)
  cmd:option("--timeout", "Seconds to wait for each task to end; the task goes on at the service "
    .. "after a timeout (dh3 wait ID).", "600"):convert(seconds):argname("<S>")
  cmd:flag("--json", "Print JSON lines only, also on a terminal.")
end

local function add_out_option(cmd)
  cmd:option("--out", "Where to save: a folder (existing, or ending in /, then created) or a file path. "
    .. "With several tasks it is always a folder.", "."):argname("<DIR|FILE>")
end

-- --journal, for the commands that create tasks or see them end: `what` says what it records.
local function add_journal_option(cmd, what)
  cmd:option("--journal", what .. " Default: $DH3_JOURNAL. One process at a time per journal: "
    .. "a second one gets an error (exit 3)."):argname("<PATH>")
end

-- What pending and resume say about the journal they read.
local JOURNAL_HELP = [[
The journal: a file of every create made with --journal (dh3 generate --journal PATH, or
DH3_JOURNAL set). A create's intent is on disk before its request leaves and its task id as soon
as it arrives, so a run cut short (Ctrl-C, a crash, a lost connection) leaves a trace of what
was paid for. It holds:
   tasks created but not seen to finish: dh3 resume waits on them and saves their images;
   creates whose answer never came back: possibly created, id unknown. They cannot be resumed;
   tell the service's support their local id, prompt and time.]]

local function generate(parser)
  local cmd = parser:command("generate", "Create tasks from prompts, wait for them and save their images. "
    .. "Several prompts (arguments or --prompts) run concurrently; creates are paced to the service's "
    .. "limit.")
  cmd:argument("prompt", ("What to draw, %d to %d characters. Quote each prompt."):format(
    contract.PROMPT_MIN, contract.PROMPT_MAX)):args("*")
  cmd:option("--prompts", "A file of prompts, one a line; blank lines and lines starting with # "
    .. "are skipped; - reads stdin."):argname("<FILE>")
  cmd:option("--aspect-ratio", "One of " .. table.concat(contract.ASPECT_RATIOS, " ") .. ".",
    contract.DEFAULTS.aspect_ratio):choices(contract.ASPECT_RATIOS):argname("<R>")
  cmd:option("--resolution", "One of " .. table.concat(contract.RESOLUTIONS, " ") .. ".",
    contract.DEFAULTS.resolution):choices(contract.RESOLUTIONS):argname("<R>")
  cmd:option("--format", "Image format: " .. table.concat(contract.OUTPUT_FORMATS, " or ") .. ".",
    contract.DEFAULTS.output_format):choices(contract.OUTPUT_FORMATS):argname("<F>")
  cmd:option("--image", ("A reference image URL; repeat for more (up to %d)."):format(
    contract.MAX_IMAGE_URLS)):count("*"):argname("<URL>")
  cmd:option("--callback-url", "A URL the service POSTs the result to when the task ends."):argname("<URL>")
  add_out_option(cmd)
  cmd:flag("--no-wait", "Print the task ids as soon as they are created and exit 0.")
  add_wait_options(cmd)
  add_journal_option(cmd, "Record every create in this journal before its request leaves, and "
    .. "each task's end, so that a run cut short loses nothing (dh3 pending, dh3 resume).")
  cmd:epilog("Examples:\n"
    .. "   dh3 generate 'a lighthouse at dawn, watercolor' --aspect-ratio 16:9 --out lighthouse.png\n"
    .. "   dh3 generate --prompts prompts.txt --resolution 2K --out images/\n"
    .. "   dh3 generate --no-wait 'a red fox in snow' --json | jq -r .task_id\n"
    .. "   dh3 generate --journal ~/.dh3.journal --prompts prompts.txt --out images/\n\n" .. EPILOG)
  return cmd
end

local RECORD_END = "Record in this journal the tasks of it seen to end, so that dh3 pending "
  .. "no longer lists them."

local function on_ids(parser, name, description, extra)
  local cmd = parser:command(name, description)
  cmd:argument("id", "Task id(s); several run concurrently."):args("+")
  if extra then extra(cmd) end
  add_journal_option(cmd, RECORD_END)
  cmd:epilog(EPILOG)
  return cmd
end

local function pending(parser)
  local cmd = parser:command("pending", "List what a journal holds unsettled: tasks created but not "
    .. "seen to finish, and creates whose answer never came back. Reads the journal only: no request "
    .. "is made, no API key needed.")
  add_journal_option(cmd, "The journal to read.")
  cmd:flag("--json", "Print JSON lines only, also on a terminal.")
  cmd:epilog(JOURNAL_HELP .. "\n\n"
    .. "Output: on a terminal, a table of each (task id or local id, age, prompt). With --json, or\n"
    .. "when stdout is not a terminal, JSON lines: {\"event\":\"pending\",\"task_id\":..,\"prompt\":..,\"at\":..}\n"
    .. "and {\"event\":\"unanswered\",\"local_id\":..,\"prompt\":..,\"at\":..} (at: Unix seconds of the create).\n\n"
    .. "Exit codes:\n"
    .. "   0    listed (also when nothing is pending)\n"
    .. "   2    usage: bad flags, no journal given, no file at PATH\n"
    .. "   3    the journal cannot be read: in use by another process, not a journal\n\n"
    .. "Environment:\n   DH3_JOURNAL    the journal when --journal is not given")
  return cmd
end

local function resume(parser)
  local cmd = parser:command("resume", "Wait on every task a journal has pending, concurrently, and save "
    .. "their images, as dh3 download does. Creates whose answer never came back are reported on "
    .. "stderr: they cannot be resumed.")
  add_journal_option(cmd, "The journal to resume; tasks seen to end are recorded in it.")
  cmd:option("--out", "The folder to save into (created when missing).", "."):argname("<DIR>")
  add_wait_options(cmd)
  cmd:epilog(JOURNAL_HELP .. "\n\nAs JSON lines, stdout also carries one event per unanswered create:\n"
    .. "   {\"event\":\"unanswered\",\"local_id\":..,\"prompt\":..,\"at\":..} (at: Unix seconds).\n"
    .. "The rows and events of the tasks are those of dh3 download; index is a task's place in the journal.\n\n"
    .. EPILOG)
  return cmd
end

--- The parser for `dh3`, and its commands by name; `version` is dh3.VERSION.
function M.new(version)
  local argparse = require "argparse"
  local parser = argparse("dh3", "Generate images with the DH3 API (the Nano Banana Pro model), "
    .. "from the command line.")
    :help_max_width(100)
    :epilog("Run 'dh3 COMMAND --help' for a command's flags.\n\n" .. EPILOG)
  parser:flag("--version", "Print the version and exit."):action(function()
    local curl = require("dh3.core").curl_version:match("^%S+")
    io.stdout:write("dh3 ", version, " (", curl, ")\n")
    os.exit(exitcode.OK)
  end)
  parser:command_target("command")
  parser:require_command(true)
  parser:add_help_command()
  local commands = {}
  commands.generate = generate(parser)
  commands.status = on_ids(parser, "status", "Print each task's state (one request each). Exits 0 whatever the state; "
    .. "the JSON state event carries images on success and error on fail.", function(cmd)
    cmd:flag("--json", "Print JSON lines only, also on a terminal.")
  end)
  commands.wait = on_ids(parser, "wait", "Wait until tasks end, without downloading.", add_wait_options)
  commands.download = on_ids(parser, "download", "Wait until tasks end if they have not yet, then save their images.",
    function(cmd)
      add_out_option(cmd)
      add_wait_options(cmd)
    end)
  commands.pending = pending(parser)
  commands.resume = resume(parser)
  -- Everything after `emulator` is the emulator's own (its --help included), untouched.
  commands.emulator = parser:command("emulator", "Run dh3-emulator, the local double of the service: "
    .. "'dh3 emulator --help' lists its flags."):handle_options(false)
  commands.emulator:argument("flags", "dh3-emulator's flags."):args("*")
  commands.emulator:epilog("It prints 'listening on http://HOST:PORT' first, then serves until Ctrl-C.\n"
    .. "Point dh3 at it with DH3_BASE_URL=http://HOST:PORT and DH3_API_KEY set to one of --keys.\n\n"
    .. "Exit codes:\n   0    stopped with Ctrl-C\n   1    cannot listen (the port is taken)\n   2    bad flags")
  return parser, commands
end

return M
