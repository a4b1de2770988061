-- A sampling profiler at the Lua level, for finding which lines of dh3 a benchmark spends its
-- VM instructions on (perf sees only C frames of the interpreter).
--   lua5.4 bench/tools/lprof.lua [-n EVERY] [-d DEPTH] script.lua args...
-- Every EVERY VM instructions (default 1000) it records the running function's stack (DEPTH
-- frames, default 4) in the main thread and in every coroutine (coroutine.create and
-- coroutine.wrap are wrapped to set the hook in each); at exit it prints the 25 commonest
-- functions, lines and stacks to stderr. Counts instructions, not time: time spent in C
-- (libcurl, malloc, the kernel) is perf's part.
local every, depth = 1000, 4
while arg[1] and arg[1]:sub(1, 1) == "-" do
  local flag = table.remove(arg, 1)
  local v = tonumber(table.remove(arg, 1))
  if flag == "-n" then every = v elseif flag == "-d" then depth = v end
end
local script = table.remove(arg, 1)
arg[0] = script

local stacks, lines, funcs, total = {}, {}, {}, 0
local getinfo, concat = debug.getinfo, table.concat

local random, sethook = math.random, debug.sethook
local hook
-- the period varies (EVERY/2 to 3*EVERY/2), so a loop whose length divides EVERY is not
-- sampled at the same few instructions every time
local function rearm(co)
  if co then sethook(co, hook, "", random(every // 2, every * 3 // 2)) else sethook(hook, "", random(every // 2, every * 3 // 2)) end
end

function hook()
  total = total + 1
  rearm(coroutine.running())
  local parts = {}
  for level = 2, depth + 1 do
    local info = getinfo(level, "Sl")
    if not info then break end
    parts[#parts + 1] = info.short_src .. ":" .. (info.currentline or 0)
    if level == 2 then
      local fn = info.short_src .. ":" .. info.linedefined
      funcs[fn] = (funcs[fn] or 0) + 1
    end
  end
  local line = parts[1] or "?"
  lines[line] = (lines[line] or 0) + 1
  local key = concat(parts, " < ")
  stacks[key] = (stacks[key] or 0) + 1
end

local create, wrap = coroutine.create, coroutine.wrap
coroutine.create = function(fn)
  local co = create(fn)
  rearm(co)
  return co
end
coroutine.wrap = function(fn)
  local co = coroutine.create(fn)
  return function(...)
    local r = table.pack(coroutine.resume(co, ...))
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end
end

local function top(t, title)
  local rows = {}
  for k, v in pairs(t) do rows[#rows + 1] = { k, v } end
  table.sort(rows, function(a, b) return a[2] > b[2] end)
  io.stderr:write(("-- %s (%d samples of %d instructions)\n"):format(title, total, every))
  for i = 1, math.min(25, #rows) do
    io.stderr:write(("%5.1f%%  %s\n"):format(100 * rows[i][2] / total, rows[i][1]))
  end
end

local function report()
  debug.sethook()
  top(funcs, "functions (file:line where defined)")
  top(lines, "lines")
  top(stacks, "stacks")
end

local exit = os.exit
os.exit = function(...) report(); exit(...) end
rearm()
local ok, err = xpcall(dofile, debug.traceback, script)
report()
if not ok then io.stderr:write(tostring(err), "\n"); exit(1) end
