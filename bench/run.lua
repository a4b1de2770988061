-- dh3's benchmarks side by side with its peers (issue 6). `make bench` runs this from the top of
-- the tree after building dh3/core.so and installing nginx, wrk, hyperfine and python3-requests.
-- It starts nginx (bench/nginx.conf.in, in a temp dir, on a free loopback port) and dh3-emulator,
-- runs every measure BENCH_RUNS times (peers interleaved with dh3 in each run, ratios taken
-- within a run, medians across runs), prints one table and writes it to bench/last-run.md.
-- bench/README.md says how to read it.
--
-- Environment: BENCH_QUICK=1 (a smoke run: smaller counts, one run), BENCH_RUNS=N,
-- BENCH_RESULTS=1 (also replace the numbers in bench/RESULTS.md between its markers),
-- BENCH_PYTHON (default /usr/bin/python3), BENCH_NGINX (default nginx), LUA (default lua5.4),
-- CC (default cc), BENCH_KEEP=1 (keep the temp dir), BENCH_ONLY=a,b (only these measures: sequential,
-- concurrent, pacing, download, memory, require, ceiling).
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"
local emulator_process = require "dh3.emulator.process"
local now = socket.gettime -- the runner itself loads nothing of dh3 but the emulator launcher

local env = os.getenv
local QUICK = env("BENCH_QUICK") == "1"
local RUNS = tonumber(env("BENCH_RUNS") or "") or (QUICK and 1 or 5)
local LUA = env("LUA") or "lua5.4" -- what runs dh3's workers (this script and the emulator: 5.4)
local CORE = env("BENCH_CORE") or "dh3/core.so" -- the build of dh3.core for that Lua
local PYTHON = env("BENCH_PYTHON") or "/usr/bin/python3"
local NGINX = env("BENCH_NGINX") or "nginx"
local CC = env("CC") or "cc"
local MiB = 1024 * 1024

local N = {
  seq = QUICK and 1000 or 10000,        -- sequential status() calls, every peer
  multi = QUICK and 2000 or 20000,      -- status reads through wait_all
  conc = 64,                            -- in flight for wait_all and the C multi floor
  creates = QUICK and 9 or 30,          -- creates at 3 per second
  qps = 3,
  tasks = QUICK and 2000 or 10000,      -- waiting tasks for memory per task
  sizes = { s = 10 * MiB, m = 40 * MiB, l = 80 * MiB }, -- the "4K" downloads
  require_runs = QUICK and 30 or 200,
  wrk_seconds = QUICK and 1 or 3,
}

-- Targets (issue 6).
local TARGET = {
  seq_floor = 1.3,      -- dh3 time / C floor time, at most
  seq_python = 4,       -- Python time / dh3 time, at least
  multi_floor = 2,      -- dh3 time / C multi floor time, at most
  pacing = 0.02,        -- |30th start / perfect - 1|, at most
  download = 0.9,       -- dh3 throughput / curl throughput, at least
  rss_growth = 2 * MiB, -- VmHWM(80 MiB) - VmHWM(10 MiB), below
  task_bytes = 2048,    -- bytes per waiting task, below
  require_ms = 5,       -- ms, below
}

--{====================================================================
-- helpers
--=====================================================================

local T0 = now()
local function log(fmt, ...)
  io.stderr:write(("[bench %6.1fs] "):format(now() - T0), fmt:format(...), "\n")
end

local function q(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end

-- Runs a shell command; returns its stdout, or raises with what it printed.
local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  if not ok then error(("command failed (%s %s): %s\n%s"):format(how, code, cmd, out), 0) end
  return out
end

local function have(cmd)
  return os.execute("command -v " .. q(cmd) .. " >/dev/null 2>&1") == true
end

-- The key=value line a worker prints, as a table (numbers converted).
local function fields(out)
  local t = {}
  for line in out:gmatch("[^\n]+") do
    if line:find("^[%w_]+=") then
      for k, v in line:gmatch("([%w_]+)=(%S+)") do t[k] = tonumber(v) or v end
    end
  end
  if not next(t) then error("no result in: " .. out, 0) end
  return t
end

local function worker(cmd) return fields(sh(cmd)) end

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function col(rows, key)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[key] end
  return out
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return math.tointeger(tonumber(port))
end

local function wait_port(port, seconds)
  local deadline = now() + seconds
  while now() < deadline do
    local c = socket.connect("127.0.0.1", port)
    if c then c:close(); return true end
    socket.sleep(0.05)
  end
  return false
end

local function http_json(method, url)
  local chunks = {}
  local ok, code = http.request{ method = method, url = url, sink = ltn12.sink.table(chunks) }
  if not ok or code ~= 200 then error(("%s %s: %s"):format(method, url, tostring(code)), 0) end
  return cjson.decode(table.concat(chunks))
end

local function fmt_s(x) return x and ("%.3f s"):format(x) or "n/a" end
local function fmt_us(x) return x and ("%.1f µs"):format(x * 1e6) or "n/a" end
local function fmt_dus(x) return x and ("%+.1f µs"):format(x * 1e6) or "n/a" end
local function fmt_x(x) return x and ("%.2fx"):format(x) or "n/a" end
local function fmt_mib(kib) return kib and ("%.1f MiB"):format(kib / 1024) or "n/a" end

--{====================================================================
-- the machine, the servers
--=====================================================================

local function machine()
  local cpu = (read_file("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?"
  local curl = (sh("curl-config --version 2>/dev/null || echo libcurl ?"):gsub("%s+$", ""))
  local py = have(PYTHON) and sh(PYTHON .. [[ -c 'import sys, requests; print("Python %d.%d.%d" % sys.version_info[:3], "requests", requests.__version__)' || true]]):gsub("%s+$", "") or "missing"
  return {
    nproc = sh("nproc"):gsub("%s+$", ""),
    cpu = cpu,
    kernel = sh("uname -r"):gsub("%s+$", ""),
    curl = curl,
    nginx = have(NGINX) and sh(NGINX .. " -v"):match("nginx/(%S+)") or "missing",
    lua = sh(LUA .. " -v"):match("^(Lua %S+)") or "Lua ?",
    python = py,
    date = os.date("!%Y-%m-%d %H:%M UTC"),
    commit = (sh("git rev-parse --short HEAD 2>/dev/null || echo unknown"):gsub("%s+$", "")),
    quick = QUICK, runs = RUNS,
    load = (read_file("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"),
  }
end

local function start_nginx(dir)
  for f, size in pairs(N.sizes) do
    sh(("head -c %d /dev/urandom > %s/files/random-%s.png"):format(size, dir, f))
  end
  sh(("chmod 0755 %s %s/files && chmod 0644 %s/files/*"):format(dir, dir, dir))
  local template = assert(read_file("bench/nginx.conf.in"), "bench/nginx.conf.in is missing")
  for _ = 1, 5 do
    local port = free_port()
    local conf = template:gsub("@(%u[%u_]*)@", {
      DIR = dir, PORT = tostring(port), SIZE_S = tostring(N.sizes.s), SIZE_M = tostring(N.sizes.m),
      SIZE_L = tostring(N.sizes.l),
    })
    local f = assert(io.open(dir .. "/nginx.conf", "w"))
    f:write(conf)
    f:close()
    local pipe = assert(io.popen(("echo $$; exec %s -p %s/ -c %s/nginx.conf -e %s/error.log 2>&1")
      :format(NGINX, dir, dir, dir), "r"))
    local pid = tonumber(pipe:read("l"))
    if wait_port(port, 5) then
      return { pid = pid, pipe = pipe, port = port, url = "http://127.0.0.1:" .. port }
    end
    os.execute("kill " .. pid .. " 2>/dev/null")
    local said = pipe:read("a")
    pipe:close()
    log("nginx did not start on port %d (%s %s); trying another port", port, said,
      read_file(dir .. "/error.log") or "")
  end
  error("nginx did not start", 0)
end

local function stop_nginx(n)
  if not (n and n.pipe) then return end
  os.execute("kill -QUIT " .. n.pid .. " 2>/dev/null")
  n.pipe:read("a")
  n.pipe:close()
  n.pipe = nil
end

--{====================================================================
-- the measures; each returns rows for the table
--=====================================================================

local M = {}

-- 10,000 sequential task:status() calls: dh3, the C floor, Python requests, luasocket.
function M.sequential(ctx)
  local base, n = ctx.nginx.url, N.seq
  local runs = {}
  local peers = {
    dh3 = ctx.dh3 .. ("status %s %d"):format(base, n),
    floor = ("%s seq %s %d"):format(ctx.floor, base, n),
    python = ctx.python and ("%s bench/workers/requests_peer.py %s %d"):format(PYTHON, base, n),
    luasocket = ("%s bench/workers/luasocket_peer.lua %s %d"):format(LUA, base, n),
    core = ctx.dh3 .. ("core %s %d json"):format(base, n), -- a diagnostic: dh3.core alone
  }
  local order = { "dh3", "floor", "python", "luasocket", "core" }
  for r = 1, RUNS do
    local row = {}
    for i = 1, #order do
      -- alternate the order between runs, so a slow drift of the machine hits everyone alike
      local name = order[r % 2 == 1 and i or #order + 1 - i]
      if peers[name] then
        local res = worker(peers[name])
        row[name], row[name .. "_cpu"] = res.wall / res.n, res.cpu / res.n
      end
    end
    row.r_floor = row.dh3 / row.floor
    row.r_python = row.python and row.python / row.dh3
    row.r_luasocket = row.luasocket / row.dh3
    row.gap_core, row.gap_lua = row.core - row.floor, row.dh3 - row.core
    runs[r] = row
    log("sequential run %d: dh3 %s, C %s, python %s, luasocket %s per call", r, fmt_us(row.dh3),
      fmt_us(row.floor), fmt_us(row.python), fmt_us(row.luasocket))
  end
  local m = function(k) return median(col(runs, k)) end
  local dh3_cell = ("%s/call (cpu %s)"):format(fmt_us(m("dh3")), fmt_us(m("dh3_cpu")))
  local label = ("%s sequential `task:status()`"):format(n)
  local rows = {
    { label, dh3_cell, ("C floor %s/call (cpu %s)"):format(fmt_us(m("floor")), fmt_us(m("floor_cpu"))),
      fmt_x(m("r_floor")) .. " the floor's time", "≤ " .. TARGET.seq_floor .. "x",
      m("r_floor") <= TARGET.seq_floor },
  }
  if ctx.python then
    rows[#rows + 1] = { label, dh3_cell,
      ("Python requests %s/call (cpu %s)"):format(fmt_us(m("python")), fmt_us(m("python_cpu"))),
      fmt_x(m("r_python")) .. " faster", "≥ " .. TARGET.seq_python .. "x faster",
      m("r_python") >= TARGET.seq_python }
  else
    rows[#rows + 1] = { label, dh3_cell, "Python requests: " .. ctx.python_missing, "n/a",
      "≥ " .. TARGET.seq_python .. "x faster", nil }
  end
  rows[#rows + 1] = { label, dh3_cell,
    ("luasocket+cjson %s/call (cpu %s), new connection each"):format(fmt_us(m("luasocket")), fmt_us(m("luasocket_cpu"))),
    fmt_x(m("r_luasocket")) .. " faster", "(context)", nil }
  rows[#rows + 1] = { label .. ": where the gap goes", dh3_cell,
    ("dh3.core alone (C engine, JSON decode, a bare Lua loop) %s/call (cpu %s)"):format(fmt_us(m("core")), fmt_us(m("core_cpu"))),
    ("C core %s, Lua layer %s per call"):format(fmt_dus(m("gap_core")), fmt_dus(m("gap_lua"))), "(diagnostic)", nil }
  ctx.seq_dh3 = m("dh3")
  return rows, runs
end

-- 20,000 status reads through client:wait_all, 64 in flight, against the C multi floor.
function M.concurrent(ctx)
  local base, n, conc = ctx.nginx.url, N.multi, N.conc
  local runs = {}
  for r = 1, RUNS do
    local row = {}
    local cmds = {
      dh3 = ctx.dh3 .. ("wait_all %s %d %d"):format(base, n, conc),
      floor = ("%s multi %s %d %d"):format(ctx.floor, base, n, conc),
      core = ctx.dh3 .. ("core_multi %s %d %d"):format(base, n, conc), -- a diagnostic
    }
    local order = r % 2 == 1 and { "dh3", "floor", "core" } or { "core", "floor", "dh3" }
    for _, name in ipairs(order) do
      local res = worker(cmds[name])
      row[name], row[name .. "_cpu"] = res.wall, res.cpu
    end
    row.ratio = row.dh3 / row.floor
    row.gap_core, row.gap_lua = (row.core - row.floor) / n, (row.dh3 - row.core) / n
    runs[r] = row
    log("wait_all run %d: dh3 %s, C multi %s", r, fmt_s(row.dh3), fmt_s(row.floor))
  end
  local m = function(k) return median(col(runs, k)) end
  ctx.multi_dh3 = m("dh3")
  local label = ("%d status reads, `client:wait_all` %d in flight"):format(n, conc)
  local dh3_cell = ("%s (%s/read, cpu %s)"):format(fmt_s(m("dh3")), fmt_us(m("dh3") / n), fmt_us(m("dh3_cpu") / n))
  return { {
    label, dh3_cell,
    ("C multi floor %s (%s/read, cpu %s)"):format(fmt_s(m("floor")), fmt_us(m("floor") / n), fmt_us(m("floor_cpu") / n)),
    fmt_x(m("ratio")) .. " the floor's time", "≤ " .. TARGET.multi_floor .. "x", m("ratio") <= TARGET.multi_floor,
  }, {
    label .. ": where the gap goes", dh3_cell,
    ("dh3.core alone, %d in flight, decoded %s (%s/read, cpu %s)"):format(conc, fmt_s(m("core")), fmt_us(m("core") / n),
      fmt_us(m("core_cpu") / n)),
    ("C core %s, Lua layer %s per read"):format(fmt_dus(m("gap_core")), fmt_dus(m("gap_lua"))), "(diagnostic)", nil,
  } }, runs
end

-- 30 creates in a loop at the service's 3 per second, against the emulator (which enforces it).
function M.pacing(ctx)
  local emu, n, qps = ctx.emulator.url, N.creates, N.qps
  -- a perfect pacer of qps per sliding second starts creates k*qps+1 .. k*qps+qps at k seconds:
  -- the n-th starts (ceil(n/qps) - 1) seconds after the first (9.0 s for 30 at 3 per second)
  local perfect = (math.ceil(n / qps) - 1) * 1.0
  local runs = {}
  for r = 1, RUNS do
    http_json("POST", emu .. "/_emulator/reset")
    socket.sleep(1.1) -- the emulator's sliding window forgets the previous run's creates
    local res = worker(ctx.dh3 .. ("pacing %s %d"):format(emu, n))
    local stats = http_json("GET", emu .. "/_emulator/stats")
    local by_status = stats.requests and stats.requests["POST /api/v1/task/create"] or {}
    local refused, accepted = 0, 0
    for status, count in pairs(by_status) do
      if status == "429" then refused = refused + count elseif status == "200" then accepted = accepted + count end
    end
    runs[r] = { last = res.last, ratio = res.last / perfect, refused = refused, accepted = accepted,
                non200 = res.non200, cpu = res.cpu, wall = res.wall, offsets = res.offsets }
    log("pacing run %d: create %d started %.4f s after the first (perfect %.3f), %d accepted, %d 429s",
      r, n, res.last, perfect, accepted, refused)
  end
  local m = function(k) return median(col(runs, k)) end
  local worst_refused, worst_dev = 0, 0
  for _, row in ipairs(runs) do
    worst_refused = math.max(worst_refused, row.refused + row.non200)
    worst_dev = math.max(worst_dev, math.abs(row.ratio - 1))
  end
  ctx.notes[#ctx.notes + 1] = ("Creates, run 1: start of each create after the first, in seconds: %s."):format(
    tostring(runs[1].offsets):gsub(",", ", "))
  return { {
    ("%d creates at %d/s (emulator)"):format(n, qps),
    ("create %d starts %.3f s after the first; %d 429s in %d runs"):format(n, m("last"), worst_refused, RUNS),
    ("perfect pacer: %.3f s"):format(perfect),
    ("%+.2f%% (worst %+.2f%%)"):format((m("ratio") - 1) * 100, worst_dev * 100),
    "within 2%, zero 429s",
    worst_dev <= TARGET.pacing and worst_refused == 0,
  } }, runs
end

-- Downloads of 10/40/80 MiB "4K" images (random bytes from nginx): throughput against curl, and
-- the peak resident memory of a process that downloads each size.
function M.download(ctx)
  local base, dir = ctx.nginx.url, ctx.dir
  local names = { "s", "m", "l" }
  local runs = {}
  for r = 1, RUNS do
    local row = {}
    for _, f in ipairs(names) do
      local d = worker(ctx.dh3 .. ("download %s/dl-%s %s/out/"):format(base, f, dir))
      local c = sh(("curl -sS -o %s/out/curl.png -w 'time=%%{time_total} bytes=%%{size_download}' %s/files/random-%s.png")
        :format(dir, base, f))
      os.remove(dir .. "/out/curl.png")
      local cf = fields(c)
      assert(cf.bytes == N.sizes[f] and d.bytes == N.sizes[f], "a download has the wrong size")
      row["dh3_" .. f] = d.bytes / d.wall
      row["cpu_" .. f] = d.cpu
      row["curl_" .. f] = cf.bytes / cf.time
      row["ratio_" .. f] = row["dh3_" .. f] / row["curl_" .. f]
      row["hwm_" .. f] = d.hwm_kib
      row["hwm0_" .. f] = d.hwm_before_kib
    end
    row.growth = (row.hwm_l - row.hwm_s) * 1024
    runs[r] = row
    log("download run %d: 40 MiB dh3 %.0f MB/s, curl %.0f MB/s; VmHWM %d/%d/%d KiB", r, row.dh3_m / 1e6,
      row.curl_m / 1e6, row.hwm_s, row.hwm_m, row.hwm_l)
  end
  local m = function(k) return median(col(runs, k)) end
  local sz = function(f) return N.sizes[f] // MiB end
  return {
    { ("download of a %d MiB \"4K\" image (nginx, random bytes)"):format(sz("m")),
      ("%.0f MB/s (cpu %.3f s)"):format(m("dh3_m") / 1e6, m("cpu_m")),
      ("curl %.0f MB/s"):format(m("curl_m") / 1e6),
      fmt_x(m("ratio_m")) .. " curl's throughput", "≥ " .. TARGET.download .. "x", m("ratio_m") >= TARGET.download },
    { ("download of a %d MiB image"):format(sz("l")),
      ("%.0f MB/s (cpu %.3f s)"):format(m("dh3_l") / 1e6, m("cpu_l")),
      ("curl %.0f MB/s"):format(m("curl_l") / 1e6),
      fmt_x(m("ratio_l")) .. " curl's throughput", "(context)", nil },
    { ("peak memory downloading %d / %d / %d MiB"):format(sz("s"), sz("m"), sz("l")),
      ("VmHWM %s / %s / %s"):format(fmt_mib(m("hwm_s")), fmt_mib(m("hwm_m")), fmt_mib(m("hwm_l"))),
      ("before the download: %s"):format(fmt_mib(m("hwm0_s"))),
      ("%+.0f KiB from %d to %d MiB"):format(m("growth") / 1024, sz("s"), sz("l")),
      "flat (< 2 MiB growth)", m("growth") < TARGET.rss_growth },
  }, runs
end

-- 10,000 tasks waiting in one client:wait_all: Lua memory per task.
function M.memory(ctx)
  local n = N.tasks
  local runs = {}
  for r = 1, math.min(RUNS, 3) do -- the figure hardly moves between runs
    runs[r] = worker(ctx.dh3 .. ("memory %s/queuing %d %d"):format(ctx.nginx.url, n, N.conc))
    log("memory run %d: %.0f bytes per waiting task (%d polled)", r, runs[r].bytes_per_task, runs[r].polled)
  end
  local m = function(k) return median(col(runs, k)) end
  return { {
    ("%d tasks waiting in one `wait_all`"):format(n),
    ("%.0f bytes/task (Lua heap)"):format(m("bytes_per_task")),
    ("RSS %.0f bytes/task"):format(m("rss_bytes_per_task")),
    ("%.2f KiB each"):format(m("bytes_per_task") / 1024),
    "< 2 KiB each", m("bytes_per_task") < TARGET.task_bytes,
  } }, runs
end

-- `require "dh3"` in a fresh lua5.4, less a bare lua5.4 (medians of many runs). require loads
-- only dh3/init.lua; the rest of the library, libcurl with it, loads with the first client: the
-- second row times `require "dh3"` plus a first `dh3.new`, and splits it into dh3.core alone
-- (libcurl's shared libraries) and the Lua modules (CPU time inside the process). Beside them,
-- what loading libcurl costs any program: a C program linked with it against an empty one.
function M.require_time(ctx)
  local lua_path = ("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s/?.so;;'"):format(ctx.tree, ctx.tree, ctx.tree)
  local empty_c = ctx.dir .. "/empty"
  sh(("printf 'int main(void) { return 0; }\\n' > %s.c && %s -O2 %s.c -o %s"):format(empty_c, CC, empty_c, empty_c))
  local cmds = {
    bare = LUA .. " -e ''",
    dh3 = LUA .. [[ -e 'require"dh3"']],
    first = LUA .. [[ -e 'require"dh3".new{api_key="k", base_url="http://127.0.0.1:9"}:close()']],
    core = LUA .. [[ -e 'require"dh3.core"']],
    c_empty = empty_c,
    c_curl = ctx.floor .. " --version", -- linked with libcurl; prints its usage and exits
  }
  local order = { "bare", "dh3", "first", "core", "c_empty", "c_curl" }
  local t, how = {}, nil
  if have("hyperfine") then
    local json = ctx.dir .. "/hyperfine.json"
    local args = {}
    for i, k in ipairs(order) do args[i] = q(cmds[k]) end
    sh(("env %s hyperfine -N -i --style none --warmup 20 --runs %d --export-json %s %s >/dev/null")
      :format(lua_path, N.require_runs, json, table.concat(args, " ")))
    local doc = cjson.decode(read_file(json))
    for i, k in ipairs(order) do t[k] = doc.results[i].median end
    how = "hyperfine"
  else
    for _, k in ipairs(order) do
      local ts = {}
      for i = 1, N.require_runs do
        local t0 = now()
        os.execute(("env %s %s >/dev/null 2>&1"):format(lua_path, cmds[k]))
        ts[i] = now() - t0
      end
      t[k] = median(ts)
    end
    how = "a loop of os.execute"
  end
  -- the Lua modules alone: CPU time of require "dh3" and a first dh3.new once dh3.core is loaded
  local cpu = {}
  for i = 1, math.min(N.require_runs, 40) do
    cpu[i] = tonumber((sh(("env %s %s -e 'require \"dh3.core\"; local c = os.clock(); "
      .. "require \"dh3\".new{api_key = \"k\", base_url = \"http://127.0.0.1:9\"}:close(); print(os.clock() - c)'")
      :format(lua_path, LUA)):match("[%d%.e%-]+")))
  end
  local libs = tonumber((sh(("ldd %s/dh3/core.so | wc -l"):format(ctx.tree)):match("%d+")))
  local ms = function(x) return ("%.1f ms"):format(x * 1000) end
  local total = t.dh3 - t.bare
  local libcurl = ("libcurl alone: C program linked with it %s vs empty C program %s (+%s); bare lua5.4 %s (%s, %d runs)")
    :format(ms(t.c_curl), ms(t.c_empty), ms(t.c_curl - t.c_empty), ms(t.bare), how, N.require_runs)
  return { {
    "`require \"dh3\"` (fresh process, less bare lua5.4)",
    ("%s (dh3/init.lua only)"):format(ms(total)), libcurl,
    ms(total), "< " .. TARGET.require_ms .. " ms", total * 1000 < TARGET.require_ms,
  }, {
    "`require \"dh3\"` and a first `dh3.new` (fresh process, less bare lua5.4)",
    ("%s: dh3.core (libcurl + %d shared libraries) %s, Lua modules %s cpu"):format(ms(t.first - t.bare), libs,
      ms(t.core - t.bare), ms(median(cpu))),
    libcurl, ms(t.first - t.bare), "(context)", nil,
  } }
end

-- wrk: how fast nginx answers with nothing but a C load generator in front of it.
function M.ceiling(ctx)
  if not have("wrk") then return { { "nginx ceiling (wrk)", "n/a", "wrk is missing", "", "(context)", nil } } end
  local url = ctx.nginx.url .. "/api/v1/task/get?task_id=bench-1"
  local function rps(conns)
    local out = sh(("wrk -t1 -c%d -d%ds -H 'Authorization: Bearer bench-key' %s"):format(conns, N.wrk_seconds, url))
    return tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  end
  local one, many = rps(1), rps(N.conc)
  local rows = { {
    "nginx's own ceiling (wrk, 1 connection)",
    ctx.seq_dh3 and ("dh3 sequential: %.0f req/s"):format(1 / ctx.seq_dh3) or "",
    ("wrk %.0f req/s (%s/request)"):format(one, fmt_us(1 / one)),
    ctx.seq_dh3 and ("dh3 at %.0f%% of it"):format(100 / ctx.seq_dh3 / one) or "", "(context)", nil,
  }, {
    ("nginx's own ceiling (wrk, %d connections)"):format(N.conc),
    ctx.multi_dh3 and ("dh3 wait_all: %.0f req/s"):format(N.multi / ctx.multi_dh3) or "",
    ("wrk %.0f req/s"):format(many),
    ctx.multi_dh3 and ("dh3 at %.0f%% of it"):format(100 * N.multi / ctx.multi_dh3 / many) or "", "(context)", nil,
  } }
  return rows
end

--{====================================================================
-- the table
--=====================================================================

local function verdict(v)
  if v == true then return "pass" elseif v == false then return "**FAIL**" else return "" end
end

local function render(rows, info, notes)
  local out = {}
  out[#out + 1] = ("Machine: %s cores, %s, Linux %s; %s; nginx %s; %s; %s."):format(info.nproc, info.cpu,
    info.kernel, info.curl, info.nginx, info.lua, info.python)
  out[#out + 1] = ("Run: %s, commit %s, %d run(s) per measure%s; medians. Load average at the start %s, at the end %s."):format(
    info.date, info.commit, info.runs, info.quick and " (BENCH_QUICK: smaller counts)" or "", info.load,
    (read_file("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)"))
  out[#out + 1] = ""
  out[#out + 1] = "| measure | dh3 | peer(s) | ratio | target | result |"
  out[#out + 1] = "|---|---|---|---|---|---|"
  for _, r in ipairs(rows) do
    out[#out + 1] = ("| %s | %s | %s | %s | %s | %s |"):format(r[1], r[2], r[3], r[4], r[5], verdict(r[6]))
  end
  if notes[1] then out[#out + 1] = "" end
  for _, n in ipairs(notes) do out[#out + 1] = n end
  return table.concat(out, "\n") .. "\n"
end

local function splice_results(text)
  local path = "bench/RESULTS.md"
  local doc = read_file(path)
  local a, b = "<!-- bench:begin -->", "<!-- bench:end -->"
  if not (doc and doc:find(a, 1, true) and doc:find(b, 1, true)) then
    log("%s has no %s ... %s markers; not updated", path, a, b)
    return
  end
  local i = doc:find(a, 1, true)
  local j = doc:find(b, 1, true)
  local f = assert(io.open(path, "w"))
  f:write(doc:sub(1, i + #a - 1), "\n", text, doc:sub(j))
  f:close()
  log("updated %s", path)
end

--{====================================================================
-- main
--=====================================================================

local function main(ctx)
  local info = machine()
  log("%s cores, %s, %s, %d run(s)%s", info.nproc, info.cpu, info.curl, RUNS, QUICK and ", quick" or "")
  assert(have(NGINX), "nginx is missing: run `make bench` (it installs it) or apt-get install nginx")

  ctx.dir = sh("mktemp -d /tmp/dh3-bench.XXXXXX"):gsub("%s+$", "")
  sh(("mkdir -p %s/files %s/out %s/tmp %s/tree/dh3"):format(ctx.dir, ctx.dir, ctx.dir, ctx.dir))
  -- what is measured is the tree as it is now: lua/, bin/ and dh3/core.so are copied, so a
  -- rebuild or an edit while the benchmarks run changes nothing here
  ctx.tree = ctx.dir .. "/tree"
  sh(("cp -R lua bin %s/"):format(ctx.tree))
  if sh(("nm -D %s 2>/dev/null | grep -c __asan_init || true"):format(CORE)):match("^%s*[1-9]") then
    -- a `make asan` is running (it swaps in a sanitizer build): build a plain one of our own
    log("dh3/core.so is a sanitizer build; building a plain copy for the benchmarks")
    sh(("make --no-print-directory -s OBJDIR=%s/build CORE=%s/dh3/core.so %s/dh3/core.so")
      :format(ctx.dir, ctx.tree, ctx.tree))
  else
    sh(("cp %s %s/dh3/core.so"):format(CORE, ctx.tree))
  end
  ctx.dh3 = ("BENCH_TREE=%s %s bench/workers/dh3.lua "):format(ctx.tree, LUA)
  ctx.floor = ctx.dir .. "/floor"
  sh(("%s -O2 -std=c99 -D_POSIX_C_SOURCE=200809L $(pkg-config --cflags libcurl) bench/workers/floor.c -o %s $(pkg-config --libs libcurl)")
    :format(CC, ctx.floor))
  if have(PYTHON) and os.execute(PYTHON .. " -c 'import requests' 2>/dev/null") then
    ctx.python = true
  else
    ctx.python_missing = PYTHON .. " with requests is missing (apt-get install python3-requests)"
  end

  ctx.nginx = start_nginx(ctx.dir)
  log("nginx on %s, files in %s", ctx.nginx.url, ctx.dir)
  ctx.emulator = assert(emulator_process.start({ "--create-qps", tostring(N.qps), "--seed", "6" },
    { lua = "lua5.4", bin = ctx.tree .. "/bin/dh3-emulator" }))
  log("dh3-emulator on %s", ctx.emulator.url)

  local rows = {}
  local only = env("BENCH_ONLY")
  local function add(name, fn)
    if only and not (("," .. only .. ","):find("," .. name .. ",", 1, true)) then return end
    local t0 = now()
    local ok, got = xpcall(fn, debug.traceback, ctx)
    if ok then
      for _, r in ipairs(got) do rows[#rows + 1] = r end
    else
      log("%s failed: %s", name, got)
      rows[#rows + 1] = { name, "error", tostring(got):match("[^\n]*"), "", "", false }
    end
    log("%s took %.1f s", name, now() - t0)
  end
  add("sequential", M.sequential)
  add("concurrent", M.concurrent)
  add("pacing", M.pacing)
  add("download", M.download)
  add("memory", M.memory)
  add("require", M.require_time)
  add("ceiling", M.ceiling)

  local text = render(rows, info, ctx.notes)
  print()
  print(text)
  local f = io.open("bench/last-run.md", "w")
  if f then f:write(text); f:close() end
  if env("BENCH_RESULTS") == "1" then splice_results(text) end
  local met, missed = 0, 0
  for _, r in ipairs(rows) do
    if r[6] == true then met = met + 1 elseif r[6] == false then missed = missed + 1 end
  end
  print(("%d target(s) met, %d missed. bench/README.md says how to read this; the table is also in bench/last-run.md.")
    :format(met, missed))
end

local ctx = { notes = {} }
local ok, err = xpcall(main, debug.traceback, ctx)
stop_nginx(ctx.nginx)
if ctx.emulator then ctx.emulator:stop() end
if ctx.dir and env("BENCH_KEEP") ~= "1" then os.execute("rm -rf " .. q(ctx.dir)) end
if not ok then
  io.stderr:write("bench: ", tostring(err), "\n")
  os.exit(1)
end
