-- The LuaLS definitions in library/ stay true: each annotated class is compared with the names
-- the real objects carry (their own public keys and their metatable's methods), and each option
-- class with the fields its function accepts. Names starting with "_" are private and left out.
local dh3 = require "dh3"
local emulator = require "helpers.emulator"

local LIBRARY = { "library/dh3.lua", "library/dh3/emulator/process.lua" }

-- {classes = {[name] = {parent, fields = {[n] = true}, methods = {[n] = true}}}, aliases = {[name] =
-- {values}}, refs = {[type name] = line}, meta = {[file] = true}}
local function parse(files)
  local out = { classes = {}, aliases = {}, refs = {}, meta = {} }
  for _, file in ipairs(files) do
    local f = assert(io.open(file))
    local class, alias, pending_local, var_class = nil, nil, nil, {}
    local n = 0
    for line in f:lines() do
      n = n + 1
      local where = file .. ":" .. n
      if line:match("^%-%-%-@meta") then out.meta[file] = true end
      local cname, parent = line:match("^%-%-%-@class%s+([%w_%.]+)%s*:?%s*([%w_%.]*)")
      if cname then
        assert(not out.classes[cname], "class " .. cname .. " defined twice (" .. where .. ")")
        class = { parent = parent ~= "" and parent or nil, fields = {}, methods = {} }
        out.classes[cname] = class
        pending_local = cname
        alias = nil
        if parent ~= "" then out.refs[parent] = where end
      end
      local aname = line:match("^%-%-%-@alias%s+([%w_%.]+)")
      if aname then
        alias = {}
        out.aliases[aname] = alias
      end
      local value = alias and line:match('^%-%-%-|%s*"([^"]+)"')
      if value then alias[#alias + 1] = value end
      local field = line:match("^%-%-%-@field%s+([%w_]+)%??%s")
      if field then
        assert(class, "a field outside a class at " .. where)
        class.fields[field] = true
      end
      if line:match("^%-%-%-@") and not line:match("^%-%-%-@class") and not line:match("^%-%-%-@alias") then
        for ref in line:gmatch("%f[%w_.](dh3%.[%w_%.]*[%w_])") do out.refs[ref] = out.refs[ref] or where end
      end
      local var = line:match("^local%s+([%w_]+)%s*=%s*{}")
      if var and pending_local then
        var_class[var] = pending_local
        pending_local = nil
      end
      local owner, method = line:match("^function%s+([%w_]+)[:.]([%w_]+)%s*%(")
      if owner then
        local c = assert(var_class[owner], "function of an unknown table at " .. where)
        out.classes[c].methods[method] = true
      end
    end
    f:close()
  end
  return out
end

local ann = parse(LIBRARY)

-- Every annotated name of a class (its own, its parent's), fields and methods together.
local function annotated(name)
  local c = assert(ann.classes[name], "no class " .. name .. " in library/")
  local names = {}
  while c do
    for k in pairs(c.fields) do names[k] = true end
    for k in pairs(c.methods) do names[k] = true end
    c = c.parent and ann.classes[c.parent]
  end
  return names
end

local function public(k)
  return type(k) == "string" and k:sub(1, 1) ~= "_"
end

-- The public names an object shows: its own keys and its metatable's methods.
local function exported(obj, into)
  into = into or {}
  for k in pairs(obj) do if public(k) then into[k] = true end end
  local mt = getmetatable(obj)
  local index = type(mt) == "table" and rawget(mt, "__index")
  if type(index) == "table" then
    for k, v in pairs(index) do if public(k) and type(v) == "function" then into[k] = true end end
  end
  return into
end

-- The methods only (for objects whose tables hold internals under plain names).
local function methods_of(obj)
  local out = {}
  local index = rawget(getmetatable(obj), "__index")
  for k, v in pairs(index) do if public(k) and type(v) == "function" then out[k] = true end end
  return out
end

local function sorted(set)
  local list = {}
  for k in pairs(set) do list[#list + 1] = k end
  table.sort(list)
  return list
end

local function same_names(name, want, got)
  -- "Passed in": what library/ annotates; "Expected": what the code has
  assert.are.same(sorted(got), sorted(want), name .. ": the annotated names differ from the real ones")
end

local function subset(name, small, big)
  for k in pairs(small) do
    assert.is_true(big[k] == true, name .. ": annotates " .. k .. ", which the object does not have")
  end
end

-- A value of no type an option accepts, so that a known field is refused for its type, an
-- unknown one for its name.
local NO_TYPE = coroutine.create(function() end)

local function accepts_fields(name, call)
  for field in pairs(annotated(name)) do
    local ok, err = pcall(call, { [field] = NO_TYPE })
    assert.is_false(ok, name .. "." .. field .. " was not checked at all")
    assert.is_nil(tostring(err):find("unknown field", 1, true), name .. "." .. field .. ": " .. tostring(err))
    assert.matches(field, tostring(err), 1, true)
  end
end

describe("library/ (LuaLS definitions of the public API)", function()
  it("is made of ---@meta files that load as plain Lua", function()
    for _, file in ipairs(LIBRARY) do
      assert.is_true(ann.meta[file] == true, file .. " has no ---@meta line")
      assert(loadfile(file))
    end
  end)

  it("defines every dh3 type it refers to", function()
    for ref, where in pairs(ann.refs) do
      assert.is_true(ann.classes[ref] ~= nil or ann.aliases[ref] ~= nil, ref .. " is not defined (" .. where .. ")")
    end
  end)

  it("lists in dh3.ErrorKind exactly the kinds of the README's error table", function()
    local f = assert(io.open("README.md"))
    local text = f:read("*a")
    f:close()
    local section = assert(text:match("\n### Errors\n(.-)\n##"), "README.md has no Errors section")
    local kinds = {}
    for kind in section:gmatch("\n| `([%w_]+)` |") do kinds[kind] = true end
    local aliased = {}
    for _, v in ipairs(ann.aliases["dh3.ErrorKind"]) do aliased[v] = true end
    assert.is_true(next(kinds) ~= nil)
    same_names("dh3.ErrorKind", aliased, kinds)
  end)

  describe("compared with the modules", function()
    local emu, client, infos
    local done_task, failed_task, new_task
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05" }
      infos = {}
      client = assert(dh3.new{ api_key = emu.key, base_url = emu.url, max_retries = 0,
        on_request = function(info) infos[#infos + 1] = info end })
      done_task = assert(client:create{ prompt = "an annotated lighthouse" })
      assert(done_task:wait{ interval = 0.05 })
      failed_task = assert(client:create{ prompt = "an annotated failure {emu:fail=broken}" })
      failed_task:wait{ interval = 0.05 }
      new_task = client:task{ prompt = "not created" }
    end)
    teardown(function()
      client:close()
      emu:stop()
    end)

    it("dh3: the module's names", function()
      local names = exported(dh3)
      if dh3.webhook ~= nil then names.webhook = true end -- loaded on first use
      same_names("dh3", annotated("dh3"), names)
    end)

    it("dh3.Client: its fields and methods", function()
      same_names("dh3.Client", annotated("dh3.Client"), exported(client))
    end)

    it("dh3.Task: its fields (new, succeeded, failed) and methods", function()
      local names = exported(new_task)
      exported(done_task, names)
      exported(failed_task, names)
      exported(client:task(done_task.id), names)
      same_names("dh3.Task", annotated("dh3.Task"), names)
    end)

    it("dh3.Image: the fields of task.images[i]", function()
      same_names("dh3.Image", annotated("dh3.Image"), exported(done_task.images[1]))
    end)

    it("dh3.Error: the fields errors carry, over failures of every sort", function()
      local names = {}
      local function add(ok, err)
        assert.is_nil(ok)
        assert.is_true(dh3.is_error(err), tostring(err))
        exported(err, names)
      end
      add(client:task{ prompt = "no" }:create())                  -- refused locally
      add(failed_task:wait())                                      -- task_failed, task_id
      local stranger = assert(dh3.new{ api_key = "wrong", base_url = emu.url, max_retries = 0 })
      finally(function() stranger:close() end)
      add(stranger:create{ prompt = "with the wrong key" })        -- auth: http_status, code
      local nowhere = assert(dh3.new{ api_key = "k", base_url = "http://127.0.0.1:9", max_retries = 0 })
      finally(function() nowhere:close() end)
      add(nowhere:create{ prompt = "to a closed port" })           -- network: curl_error
      emu:config{ fault_429 = 1 }
      add(client:create{ prompt = "paced out" })                   -- rate_limited: retry_after
      emu:config{ fault_429 = 0, fault_create_close = 1 }
      add(client:create{ prompt = "answer lost" })                 -- maybe_created
      emu:config{ fault_create_close = 0 }
      local copy = client:task(done_task.id)
      assert(copy:status())
      copy.images[1].url = emu.url .. "/files/00.png"              -- no such file: 404
      local dir = os.tmpname()
      os.remove(dir)
      add(copy:download(dir .. "/"))                               -- a failed download: paths
      os.execute("rm -rf '" .. dir .. "'")
      same_names("dh3.Error", annotated("dh3.Error"), names)
    end)

    it("dh3.RequestInfo: what on_request receives", function()
      local names = {}
      for _, info in ipairs(infos) do exported(info, names) end
      local stranger = assert(dh3.new{ api_key = "wrong", base_url = emu.url, max_retries = 0,
        on_request = function(info) exported(info, names) end })
      finally(function() stranger:close() end)
      stranger:create{ prompt = "refused, with its error kind" }
      same_names("dh3.RequestInfo", annotated("dh3.RequestInfo"), names)
    end)

    it("dh3.Group: the methods of what client:watch returns", function()
      local group = client:watch({ done_task })
      same_names("dh3.Group", annotated("dh3.Group"), methods_of(group))
      group:stop()
    end)

    it("dh3.Listener: its methods, and the fields it annotates", function()
      local listener = assert(client:listen{})
      local names = annotated("dh3.Listener")
      local methods = {}
      for k in pairs(ann.classes["dh3.Listener"].methods) do methods[k] = true end
      same_names("dh3.Listener methods", methods, methods_of(listener))
      subset("dh3.Listener", names, exported(listener))
      listener:close()
    end)

    it("dh3.webhook, dh3.Deduplicator and dh3.WebhookResult", function()
      subset("dh3.webhook", annotated("dh3.webhook"), exported(dh3.webhook))
      same_names("dh3.Deduplicator", annotated("dh3.Deduplicator"), exported(dh3.webhook.deduplicator()))
      local names = {}
      for _, status in ipairs{ '"status":"success","images":[{"url":"https://x.example/r.png",'
          .. '"content_type":"image/png","file_name":"r.png","file_size":"10","width":"1","height":"1"}]',
          '"status":"fail","err_msg":"broken"' } do
        local body = '{"code":200,"message":"ok","nano_banana_pro_output":{"task_id":"abc",' .. status .. "}}"
        exported(assert(dh3.webhook.parse(body)), names)
      end
      same_names("dh3.WebhookResult", annotated("dh3.WebhookResult"), names)
    end)

    it("the option classes: every annotated field is one the function knows", function()
      accepts_fields("dh3.Options", function(opts) return dh3.new(opts) end)
      accepts_fields("dh3.TaskInput", function(input) return client:task(input) end)
      accepts_fields("dh3.WaitOptions", function(opts) return done_task:wait(opts) end)
      accepts_fields("dh3.WatchOptions", function(opts) return client:watch({ done_task }, opts) end)
      accepts_fields("dh3.DownloadOptions", function(opts) return done_task:download("unused/", opts) end)
      accepts_fields("dh3.ListenOptions", function(opts) return client:listen(opts) end)
      local watch = {}
      for k in pairs(require("dh3.poller").OPTIONS) do watch[k] = true end
      same_names("dh3.WatchOptions", annotated("dh3.WatchOptions"), watch)
    end)

    it("dh3.emulator.process and the process it starts", function()
      local process = require "dh3.emulator.process"
      subset("dh3.emulator.process", annotated("dh3.emulator.process"), exported(process))
      local other = assert(process.start{ "--keys", "k" })
      local ok, err = pcall(function()
        same_names("dh3.emulator.Process methods", ann.classes["dh3.emulator.Process"].methods, methods_of(other))
        subset("dh3.emulator.Process", annotated("dh3.emulator.Process"), exported(other))
      end)
      other:stop()
      assert(ok, err)
    end)
  end)
end)
