-- The command line's exit codes: what each means, which one an error maps to, and which one wins
-- when several tasks of one run end differently.
local M = {}

M.OK = 0
M.TASK_FAILED = 1  -- the service ran the task and it ended in fail
M.USAGE = 2        -- bad flags, input refused locally, no API key: fix the command and rerun
M.ERROR = 3        -- the API or the network failed (auth refused, 4xx, 5xx, connection, bad answer),
                   -- or the journal (in use by another process, unreadable)
M.TIMEOUT = 4      -- a wait or a request ran out of time; the task may still finish
M.INTERRUPTED = 130 -- Ctrl-C (128 + SIGINT, as shells report it)

-- Worst first. A mistake in the command makes every other outcome meaningless; an API or network
-- failure means dh3 could not do its job; a timeout may still end well (dh3 wait ID); a failed
-- task is the service's answer, delivered.
local ORDER = { M.INTERRUPTED, M.USAGE, M.ERROR, M.TIMEOUT, M.TASK_FAILED, M.OK }
local RANK = {}
for i, code in ipairs(ORDER) do RANK[code] = #ORDER - i end

M.HELP = [[
Exit codes:
   0    success
   1    a task failed (the service ended it in fail)
   2    usage: bad flags, input refused before sending, no API key
   3    API or network error: key refused, service error, connection failure, bad answer;
        or the journal is in use by another process or unreadable
   4    timeout: a task did not end within --timeout (wait on it again: dh3 wait ID)
   130  interrupted (Ctrl-C); the ids of tasks still running are printed
   With several tasks the worst wins, in this order: 130, 2, 3, 4, 1, 0.]]

--- The code of the worse of two outcomes.
function M.worst(a, b)
  return RANK[a] >= RANK[b] and a or b
end

--- The code for a dh3 error.
function M.for_error(err)
  local kind = err.kind
  if kind == "task_failed" then return M.TASK_FAILED end
  if kind == "timeout" then return M.TIMEOUT end
  -- refused here, before any request: a missing or malformed key, a bad URL or input
  if (kind == "invalid_request" or kind == "auth") and not err.http_status then return M.USAGE end
  return M.ERROR
end

return M
