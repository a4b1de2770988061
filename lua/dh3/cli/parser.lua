-- The command line's grammar: commands, flags, and the help text of each, on lua-argparse (the only
-- place that loads it, so the library itself never needs it).
local contract = require "dh3.contract"
local exitcode = require "dh3.cli.exitcode"

local M = {}

local ENVIRONMENT = [[
Environment:
   DH3_API_KEY    the API key (required; never printed)
   DH3_BASE_URL   the service (default https://api.dh3.app), e.g. a local emulator's URL
   DH3_JOURNAL    the journal when --journal is not given (empty: none)]]

local OUTPUT = [[
Output: on a terminal, one live row per task (state and elapsed time while waiting, a progress
bar with size and speed while downloading); a task that ends leaves a row with its prompt and
where its images were saved, and a run of several ends with a summary line. Every error goes to
stderr, one line each. With --json, or when stdout is not a terminal, stdout carries JSON lines
only (one event object a line: created, state, saved, skipped, error, summary; see README.md),
and errors are also written to stderr.]]

-- Said once, in `dh3 --help`: what every command that runs tasks shares. Each command's own help
-- points here and says only what is its own.
local SHARED = OUTPUT .. "\n\n" .. exitcode.HELP
  .. "\n   dh3 status and dh3 pending have codes of their own: see their --help."
  .. "\n\n" .. ENVIRONMENT
local SEE_SHARED = "Output, exit codes and environment: see 'dh3 --help'."

-- argparse's convert: a finite number of seconds above zero, or nil and why.
local function seconds(s)
  local n = tonumber(s)
  if n and n > 0 and n < math.huge then return n end
  return nil, "--timeout must be a positive number of seconds, got '" .. s .. "'"
end

local function add_wait_options(cmd)
  cmd:option("--timeout", "Seconds to wait for each task to end; a status read that fails for a "
    .. "reason that may pass (the network, the service) is tried again until then. The task goes on "
    .. "at the service after a timeout (dh3 wait ID).", "600"):convert(seconds):argname("<S>")
  cmd:flag("--json", "Print JSON lines only, also on a terminal.")
end

local function add_out_option(cmd)
  cmd:option("--out", "Where to save: a folder (existing, or ending in /, then created) or a file path "
    .. "in an existing folder. With several tasks it must be a folder. Checked before anything is "
    .. "sent.", "."):argname("<DIR|FILE>")
end

-- --journal, for the commands that create tasks or see them end: `what` says what it records.
local function add_journal_option(cmd, what)
  cmd:option("--journal", what .. " Default: $DH3_JOURNAL. One process at a time per journal: "
    .. "a second one gets an error (exit 3).", nil):argname("<PATH>")
end

-- What pending says about the journal it reads.
local JOURNAL_HELP = [[
The journal: a file of every create made with --journal (dh3 generate --journal PATH, or
DH3_JOURNAL set). A create's intent is on disk before its request leaves and its task id as soon
as it arrives, so a run cut short (Ctrl-C, a crash, a lost connection) leaves a trace of what
was paid for. It holds:
   tasks created but not seen to finish: dh3 resume waits on them and saves their images;
   creates whose answer never came back: possibly created, id unknown. They cannot be resumed;
   tell the service's support their local id, prompt and time; once that is settled,
   --forget LOCAL_ID stops listing one (its record stays in the journal).]]

local function generate(parser)
  local cmd = parser:command("generate", "Create tasks from prompts, wait for them and save their images. "
    .. "Several prompts (arguments or --prompts) run concurrently; creates are paced to the service's "
    .. "limit. Every prompt and --out are checked before anything is sent.")
  cmd:argument("prompt", ("What to draw, %d to %d characters, not only spaces. Quote each prompt."):format(
    contract.PROMPT_MIN, contract.PROMPT_MAX)):args("*")
  cmd:option("--prompts", "A file of prompts, one a line; blank lines and lines starting with # "
    .. "are skipped; - reads stdin. Errors name the file's line."):argname("<FILE>")
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
    .. "each task's end, so that a run cut short loses nothing (dh3 pending, dh3 resume). A prompt "
    .. "whose images the journal says were saved is skipped.")
  cmd:flag("--again", "With a journal: create every prompt, also those it would skip.")
  cmd:epilog("Examples:\n"
    .. "   dh3 generate 'a lighthouse at dawn, watercolor' --aspect-ratio 16:9 --out lighthouse.png\n"
    .. "   dh3 generate --prompts prompts.txt --resolution 2K --out images/\n"
    .. "   dh3 generate --no-wait 'a red fox in snow' --json | jq -r .task_id\n"
    .. "   dh3 generate --journal runs.journal --prompts prompts.txt --out images/\n\n"
    .. "Refused before anything is sent (exit 2): a prompt the service would refuse or that is only\n"
    .. "spaces; an --out file whose extension is not --format's (.png for png, .jpg or .jpeg for jpg);\n"
    .. "an --out file name (x.png) with several prompts, which need a folder; an --out folder that\n"
    .. "cannot be made or written to, or a file path whose folder does not exist.\n\n"
    .. "Rerunning with the same --journal creates only what did not succeed: a prompt is skipped when\n"
    .. "the journal has a task of the same prompt and options (the whole request) whose images were\n"
    .. "saved and are still there; it is said on stdout (a \"skipped\" event in JSON lines). The\n"
    .. "journal forgets finished tasks when it compacts (past 1000 records): a later rerun then\n"
    .. "creates them anew. --again creates every prompt.\n\n"
    .. SEE_SHARED)
  return cmd
end

local RECORD_END = "Record in this journal the tasks of it seen to end, so that dh3 pending "
  .. "no longer lists them."

local function on_ids(parser, name, description, extra, epilog)
  local cmd = parser:command(name, description)
  cmd:argument("id", "Task id(s); several run concurrently."):args("+")
  if extra then extra(cmd) end
  add_journal_option(cmd, RECORD_END)
  cmd:epilog(epilog or SEE_SHARED)
  return cmd
end

local STATUS_HELP = [[
Exit codes:
   0    every task was read, whatever its state (fail included: its row and event say it)
   2    usage: bad flags, a malformed id, no API key
   3    API or network error: key refused, no such task (not_found), connection failure
   4    a read timed out

As JSON lines, the state event carries images on success and error on fail.
Output and environment: see 'dh3 --help'.]]

local function pending(parser)
  local cmd = parser:command("pending", "List what a journal holds unsettled: tasks created but not "
    .. "seen to finish, and creates whose answer never came back. Without --forget it only reads the "
    .. "journal: no request is made, no API key needed, no lock taken (it works while a run holds the "
    .. "journal).")
  cmd:option("--journal", "The journal to read. Default: $DH3_JOURNAL."):argname("<PATH>")
  cmd:flag("--json", "Print JSON lines only, also on a terminal.")
  cmd:option("--forget", "Stop listing the unanswered create of this local id: a record saying so "
    .. "is added to the journal (the create's own record stays). Repeat for more. Takes the "
    .. "journal's lock, as a run does."):count("*"):argname("<LOCAL_ID>")
  cmd:epilog(JOURNAL_HELP .. "\n\n"
    .. "Output: on a terminal, a table of each (task id or local id, age, prompt). With --json, or\n"
    .. "when stdout is not a terminal, JSON lines: {\"event\":\"pending\",\"task_id\":..,\"prompt\":..,\"at\":..}\n"
    .. "and {\"event\":\"unanswered\",\"local_id\":..,\"prompt\":..,\"at\":..} (at: Unix seconds of the create);\n"
    .. "with --forget, {\"event\":\"forgotten\",\"local_id\":..,\"prompt\":..} for each.\n\n"
    .. "Exit codes:\n"
    .. "   0    listed (also when nothing is pending), or forgotten\n"
    .. "   2    usage: bad flags, no journal given, no file at PATH, --forget of a local id that is\n"
    .. "        not an unanswered create of the journal\n"
    .. "   3    the journal cannot be read (not a journal, unreadable); with --forget, also when\n"
    .. "        another process holds it\n\n"
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
  cmd:epilog("A create whose answer never came back is possibly created, id unknown: it is said on\n"
    .. "stderr, and as JSON lines stdout carries an event for it:\n"
    .. "   {\"event\":\"unanswered\",\"local_id\":..,\"prompt\":..,\"at\":..} (at: Unix seconds).\n"
    .. "See dh3 pending --help. The rows and events of the tasks are those of dh3 download; index is a\n"
    .. "task's place in the journal.\n\n" .. SEE_SHARED)
  return cmd
end

--- The parser for `dh3`, and its commands by name; `version` is dh3.VERSION.
function M.new(version)
  local argparse = require "argparse"
  local parser = argparse("dh3", "Generate images with the DH3 API (the Nano Banana Pro model), "
    .. "from the command line.")
    :help_max_width(100)
    :epilog("Run 'dh3 COMMAND --help' for a command's flags.\n\n" .. SHARED)
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
  commands.status = on_ids(parser, "status", "Print each task's state (one request each).", function(cmd)
    cmd:flag("--json", "Print JSON lines only, also on a terminal.")
  end, STATUS_HELP)
  commands.wait = on_ids(parser, "wait", "Wait until tasks end, without downloading.", add_wait_options)
  commands.download = on_ids(parser, "download", "Wait until tasks end if they have not yet, then save their images.",
    function(cmd)
      add_out_option(cmd)
      add_wait_options(cmd)
    end)
  commands.pending = pending(parser)
  commands.resume = resume(parser)
  return parser, commands
end

return M
