-- The rock installs the module and both commands, offline, with Debian's lua-cjson.
-- Not a memory test: under `make asan`, the preloaded sanitizer would abort luarocks' helpers
-- (sed and friends leak at exit), so the commands run without it.
local function run(cmd)
  local p = io.popen("env -u LD_PRELOAD sh -c '" .. cmd:gsub("'", [['\'']]) .. "' 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

local function rockspec_modules()
  local env = {}
  assert(loadfile("rockspec/dh3-scm-1.rockspec", "t", env))()
  return env.build.modules, env
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

  it("installs with `luarocks make --deps-mode=none` into a fresh tree, commands included", function()
    local work = os.tmpname()
    os.remove(work)
    assert(run("mkdir -p " .. work .. "/src && cp -r src lua bin library rockspec " .. work .. "/src/"))
    local tree = work .. "/tree"
    local ok, out = run(("cd %s/src && luarocks --lua-version=5.4 --tree=%s make --deps-mode=none "
      .. "rockspec/dh3-scm-1.rockspec"):format(work, tree))
    assert.is_true(ok, out)
    local lua_path = ("%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;"):format(tree, tree)
    local c_path = ("%s/lib/lua/5.4/?.so;;"):format(tree)
    local env = ("cd / && LUA_PATH_5_4='%s' LUA_CPATH_5_4='%s' "):format(lua_path, c_path)
    ok, out = run(env .. "lua5.4 -e 'local d = require \"dh3\"; print(d.VERSION, package.searchpath(\"dh3.core\", package.cpath))'")
    assert.is_true(ok, out)
    assert.matches("^%d+%.%d+%.%d+\t" .. tree:gsub("%p", "%%%0") .. "/lib/lua/5.4/dh3/core.so", out)
    ok, out = run(env .. tree .. "/bin/dh3 --version")
    assert.is_true(ok, out)
    assert.matches("^dh3 %d+%.%d+%.%d+", out)
    ok, out = run(env .. tree .. "/bin/dh3-emulator --help")
    assert.is_true(ok, out)
    assert.matches("%-%-port", out)
    run("rm -rf " .. work)
  end)
end)
