-- The rock installs the module and both commands, offline, with Debian's lua-cjson, for every Lua
-- the rockspec allows. Written in the Lua that 5.1 to 5.4 and LuaJIT all accept.
-- Not a memory test: under `make asan`, the preloaded sanitizer would abort luarocks' helpers
-- (sed and friends leak at exit), so the commands run without it.

-- Runs cmd in sh; returns whether it exited 0, its output (stdout and stderr), and its exit code.
-- The code is echoed by the shell: a popen'd file's close() gives no exit status on 5.1 and LuaJIT.
local function run(cmd)
  local p = io.popen("env -u LD_PRELOAD sh -c '" .. cmd:gsub("'", [['\'']]) .. "' 2>&1; echo \"exit:$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit:(%d+)%s*$"))
  out = out:gsub("exit:%d+%s*$", "")
  return code == 0, out, code
end

local function rockspec_modules()
  local env = {}
  local chunk
  if setfenv then -- 5.1, LuaJIT
    chunk = assert(loadfile("rockspec/dh3-scm-1.rockspec"))
    setfenv(chunk, env)
  else
    chunk = assert(loadfile("rockspec/dh3-scm-1.rockspec", "t", env))
  end
  chunk()
  return env.build.modules, env
end

-- A copy of the tree's sources (no build products) in a fresh folder: returns the folder.
local function copy_sources()
  local work = os.tmpname()
  os.remove(work)
  assert(run("mkdir -p " .. work .. "/src && cp -r src lua bin library rockspec " .. work
    .. "/src/ && rm -f " .. work .. "/src/src/*.o"))
  return work
end

local function quote_pattern(s)
  return (s:gsub("%p", "%%%0"))
end

describe("rockspec/dh3-scm-1.rockspec", function()
  it("lists every Lua module and every C source of the tree", function()
    local modules = rockspec_modules()
    local p = io.popen("cd lua && find dh3 -name '*.lua' | sort")
    for path in p:lines() do
      local name = path:gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal("lua/" .. path, modules[name], "module " .. name .. " is not in the rockspec")
    end
    p:close()
    local sources = {}
    for _, s in ipairs(modules["dh3.core"].sources) do sources[s] = true end
    p = io.popen("ls src/*.c")
    for path in p:lines() do assert.is_true(sources[path], path .. " is not in the rockspec") end
    p:close()
  end)

  it("allows every Lua the C core builds for: 5.1 to 5.4 (LuaJIT as 5.1)", function()
    local _, env = rockspec_modules()
    local found
    for _, dep in ipairs(env.dependencies) do
      if dep:match("^lua%s") then found = dep end
    end
    assert.are.equal("lua >= 5.1, < 5.5", found)
  end)

  it("installs with `luarocks make --deps-mode=none` into a fresh tree, commands included", function()
    local work = copy_sources()
    local tree = work .. "/tree"
    local ok, out = run(("cd %s/src && luarocks --lua-version=5.4 --tree=%s make --deps-mode=none "
      .. "rockspec/dh3-scm-1.rockspec"):format(work, tree))
    assert.is_true(ok, out)
    local lua_path = ("%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;"):format(tree, tree)
    local c_path = ("%s/lib/lua/5.4/?.so;;"):format(tree)
    local env = ("cd / && LUA_PATH_5_4='%s' LUA_CPATH_5_4='%s' "):format(lua_path, c_path)
    ok, out = run(env .. "lua5.4 -e 'local d = require \"dh3\"; print(d.VERSION, package.searchpath(\"dh3.core\", package.cpath))'")
    assert.is_true(ok, out)
    assert.matches("^%d+%.%d+%.%d+\t" .. quote_pattern(tree) .. "/lib/lua/5.4/dh3/core.so", out)
    ok, out = run(env .. tree .. "/bin/dh3 --version")
    assert.is_true(ok, out)
    assert.matches("^dh3 %d+%.%d+%.%d+", out)
    ok, out = run(env .. tree .. "/bin/dh3-emulator --help")
    assert.is_true(ok, out)
    assert.matches("%-%-port", out)
    run("rm -rf " .. work)
  end)

  -- The C module only: the Lua modules install beside it, and whether they run on 5.1 is their
  -- own specs' business (make test LUA=lua5.1).
  it("installs for Lua 5.1 with `luarocks --lua-version=5.1`, a C module that lua5.1 and luajit load", function()
    local work = copy_sources()
    local tree = work .. "/tree"
    local ok, out = run(("cd %s/src && luarocks --lua-version=5.1 --tree=%s make --deps-mode=none "
      .. "rockspec/dh3-scm-1.rockspec"):format(work, tree))
    assert.is_true(ok, out)
    local f = io.open(tree .. "/share/lua/5.1/dh3/init.lua")
    assert.is_truthy(f, "dh3/init.lua is not installed for 5.1")
    f:close()
    -- only the rock's tree and Lua's defaults (Debian's cjson) on the paths, from /
    local c_path = ("%s/lib/lua/5.1/?.so;;"):format(tree)
    local script = [[
      local name
      for t in package.cpath:gmatch("[^;]+") do
        local p = t:gsub("%?", "dh3/core")
        local h = io.open(p)
        if h and not name then name = p end
        if h then h:close() end
      end
      local core = require "dh3.core"
      local e = core.engine()
      local ok, err = pcall(e.request, e, {url = "http://127.0.0.1:1/", expect_size = 2^60})
      e:close()
      print(_VERSION, core.VERSION, name, core.json_decode("[5]")[1], ok, err)
    ]]
    for _, lua in ipairs({ "lua5.1", "luajit" }) do
      ok, out = run(("cd / && LUA_CPATH='%s' %s -e '%s'"):format(c_path, lua, script))
      assert.is_true(ok, lua .. ": " .. out)
      assert.matches("^Lua 5%.1\t%d+%.%d+%.%d+\t" .. quote_pattern(tree) .. "/lib/lua/5%.1/dh3/core%.so\t5\tfalse\t", out)
      -- past 2^53 an integer is refused where Lua has no integers, not truncated
      assert.matches("expect_size' must be an integer from 0 to 9007199254740991", out, 1, true)
    end
    run("rm -rf " .. work)
  end)
end)
