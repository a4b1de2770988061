-- Security specs (issue 7): what a user of a paid API must be able to trust, each shown by trying
-- to break it. TLS is verified (the emulator serves HTTPS with certificates made here by openssl);
-- the API key never leaves the Authorization header of API requests; every size a server controls
-- is capped; file names from the service are never paths; the webhook receiver survives a flood.
-- SECURITY.md maps each guarantee to the spec here that tests it.
--
-- Besides the emulator, a small fake service answers what the real one never should: redirects
-- to another host, huge bodies and headers, deep JSON, too many images, hostile file names. It is
-- the emulator's generic HTTP server (not the client under test) in a child process, with two
-- listeners: A, the service (its scenario is the first segment of the base URL's path), and B,
-- "another host", which only records what reaches it.
local dh3 = require "dh3"
local core = require "dh3.core"
local output = require "dh3.output"
local webhook = require "dh3.webhook"
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"
local SLOW = require("helpers.timing").SLOW
local sh, ls, read_file, write_file, tmpdir, rm_rf =
  files.quote, files.ls, files.read_file, files.write_file, files.tmpdir, files.rm_rf


-- Distinctive keys: any trace of one, even a piece, is found.
local KEY = "sk-dh3-SECRET-5f1e9a7c3b2d4e60"
local WRONG_KEY = "sk-dh3-WRONG-0a9b8c7d6e5f4a3b"
local SECRETS = { KEY, WRONG_KEY, "SECRET-5f1e", "5f1e9a7c3b2d4e60", "WRONG-0a9b", "0a9b8c7d6e5f4a3b" }

local TASK_ID = "0123456789abcdef0123456789abcdef"

-- {=====================================================================
-- Helpers
-- ======================================================================

-- Where a secret appears in v (strings, table keys and values, and tostring of anything with a
-- __tostring), as a readable path; nil when nowhere.
local function secret_in(v, where, seen)
  where, seen = where or "value", seen or {}
  local t = type(v)
  if t == "string" then
    for _, s in ipairs(SECRETS) do
      if v:find(s, 1, true) then return ("%s holds %q"):format(where, s) end
    end
  elseif t == "table" or t == "userdata" then
    if seen[v] then return nil end
    seen[v] = true
    local mt = getmetatable(v)
    if type(mt) == "table" and mt.__tostring then
      local found = secret_in(tostring(v), "tostring(" .. where .. ")", seen)
      if found then return found end
    end
    if t == "table" then
      for k, val in pairs(v) do
        local found = secret_in(k, where .. " (a key)", seen) or secret_in(val, where .. "." .. tostring(k), seen)
        if found then return found end
      end
    end
  end
  return nil
end

local function assert_no_secret(v, what)
  local found = secret_in(v, what)
  assert(found == nil, found)
end

local closed_port = files.closed_port

-- Starts `lua5.4 script args...` in the background, its stdout and stderr in a pipe. The shell
-- prints its pid, then becomes the script (exec), so that pid is the script's. The scripts are
-- helpers, not under test (the fake service is the emulator's server, which is 5.4's): they run
-- under the emulator's Lua whatever Lua runs the specs.
local function spawn(script, args)
  local path = os.tmpname()
  write_file(path, script)
  -- a helper process, not under test: without the sanitizer `make asan` preloads (it would abort
  -- the child at exit over luasocket's allocations)
  local words = { "echo $$; exec env -u LD_PRELOAD", sh(lua.emulator), sh(path) }
  for _, a in ipairs(args or {}) do words[#words + 1] = sh(a) end
  local pipe = assert(io.popen(table.concat(words, " ") .. " 2>&1", "r"))
  local pid = tonumber(pipe:read("*l"))
  return { pid = pid, pipe = pipe, path = path }
end

-- Stops a spawned child (when still running) and returns what else it printed.
local function reap(child)
  os.execute("kill " .. child.pid .. " 2>/dev/null")
  local rest = child.pipe:read("*a")
  child.pipe:close()
  os.remove(child.path)
  return rest
end

local function make_cert(dir, name, san)
  local cmd = ("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 1 -subj /CN=localhost "
    .. "-addext subjectAltName=%s 2>/dev/null"):format(sh(dir .. "/" .. name .. ".key"),
    sh(dir .. "/" .. name .. ".crt"), san)
  assert(lua.execute(cmd), "openssl could not make a certificate")
  return dir .. "/" .. name .. ".crt", dir .. "/" .. name .. ".key"
end

-- A client for the spec: this file's key, no retries, no pacing, unless opts say otherwise.
local function new_client(base_url, opts)
  local o = { api_key = KEY, base_url = base_url, max_retries = 0, retry_delay = 0.01, create_qps = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(dh3.new(o))
end

-- Calls fn(client) and closes the client as fn returns or raises (what a `local client <close>`
-- in a block of its own does on 5.4); returns what fn returned. For a client that must be closed
-- before the test goes on (busted's finally() runs once, at the test's end).
local function pack(...) return { n = select("#", ...), ... } end

local function with_client(client, fn)
  local results = pack(pcall(fn, client))
  client:close()
  if not results[1] then error(results[2], 0) end
  return lua.unpack(results, 2, results.n)
end

local temp_files = files.temp_files
-- }=====================================================================

-- {=====================================================================
-- The fake service
-- ======================================================================
-- Hostile file names, served one per scenario "name-<i>". OUTSIDE is replaced by an absolute
-- folder of the spec's (never a real system file: the specs may run as root).
local NAME_ROWS = {
  { "a parent path", "../../evil.png", "evil.png" },
  { "an absolute path", "OUTSIDE/passwd", "passwd" },
  { "a home path", "~/.ssh/authorized_keys", "authorized_keys" },
  { "Windows separators", "..\\..\\evil.png", "evil.png" },
  { "a NUL byte", "a\0b.png", "a" },
  { "control characters", "x\27[31m\r\nred\t.png", "x_[31m__red_.png" },
  { "a reserved name (CON)", "CON", TASK_ID .. "-1.png" },
  { "a reserved name with an extension (lpt1.png)", "lpt1.png", TASK_ID .. "-1.png" },
  { "..", "..", TASK_ID .. "-1.png" },
  { "an empty name", "", TASK_ID .. "-1.png" },
  { "a folder only", "dir/", TASK_ID .. "-1.png" },
  { "a hidden name", ".bashrc", "bashrc" },
  { "a name of 300 bytes", ("n"):rep(296) .. ".png", ("n"):rep(116) .. ".png" },
}

local FAKE = [==[
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local cjson = require("cjson").new()
local server = require "dh3.emulator.server"
local ID, MAX_IMAGES, NAMES = arg[1], tonumber(arg[2]), cjson.decode(arg[3])

local IMG = ("dh3-image-bytes!"):rep(64) -- 1 KiB: "the image"
local seen = {}
local a, b

local function json(respond, status, doc, extra)
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra or {}) do headers[k] = v end
  respond(status, headers, cjson.encode(doc))
end

local function image(path, name, size)
  return { url = a:url() .. path, content_type = "image/png", file_name = name,
           file_size = tostring(size or #IMG), width = "32", height = "32" }
end

local function success(respond, images)
  json(respond, 200, { code = 200, message = "ok",
    nano_banana_pro_output = { task_id = ID, status = "success", images = images } })
end

local function record(name, req)
  seen[#seen + 1] = { server = name, method = req.method, target = req.target, headers = req.headers,
                      body = req.body }
end

-- Answers to both API calls, whatever the call.
local BOTH = {
  redirect = function(req, respond)
    respond(302, { Location = b:url() .. "/stolen" .. req.target }, "moved")
  end,
  bigbody = function(_, respond)
    json(respond, 200, { code = 200, message = "ok", task_id = ID, pad = ("x"):rep(5 * 1024 * 1024) })
  end,
  bigheaders = function(_, respond)
    local headers = { ["Content-Type"] = "application/json" }
    for i = 1, 200 do headers["X-Filler-" .. i] = ("x"):rep(100) end
    respond(200, headers, '{"code":200,"message":"ok"}')
  end,
  deep = function(_, respond)
    respond(200, { ["Content-Type"] = "application/json" },
      '{"code":200,"message":"ok","task_id":"' .. ID .. '","nano_banana_pro_output":'
      .. ("["):rep(10000) .. ("]"):rep(10000) .. "}")
  end,
  garbage = function(_, respond)
    respond(200, { ["Content-Type"] = "text/html" }, "<html>not json</html>")
  end,
  slow = function(_, respond)
    a.loop:sleep(3)
    json(respond, 200, { code = 200, message = "ok", task_id = ID })
  end,
}

-- Answers to a status read.
local GET = {
  ok = function(_, respond) success(respond, { image("/img/ok", "ok.png") }) end,
  manyimages = function(_, respond, n)
    local images = {}
    for i = 1, n or MAX_IMAGES + 1 do images[i] = image("/img/ok", "many-" .. i .. ".png") end
    success(respond, images)
  end,
  oversize = function(_, respond) success(respond, { image("/img/big", "big.png") }) end,
  imgmissing = function(_, respond) success(respond, { image("/img/missing", "gone.png") }) end,
  imgelsewhere = function(_, respond) success(respond, { image("/img/elsewhere", "moved.png") }) end,
  imgfile = function(_, respond) success(respond, { image("/img/tofile", "file.png") }) end,
}
GET.maximages = function(req, respond) return GET.manyimages(req, respond, MAX_IMAGES) end

local IMAGES = {
  ["/img/ok"] = function(respond) respond(200, { ["Content-Type"] = "image/png" }, IMG) end,
  ["/img/big"] = function(respond) respond(200, { ["Content-Type"] = "image/png" }, IMG:rep(5)) end,
  ["/img/elsewhere"] = function(respond) respond(302, { Location = b:url() .. "/img/ok" }, "") end,
  ["/img/tofile"] = function(respond) respond(302, { Location = "file:///etc/passwd" }, "") end,
}

local function handle_a(req, respond)
  if req.path == "/_seen" then return json(respond, 200, seen) end
  if req.path == "/_clear" then seen = {} return respond(200, {}, "") end
  record("A", req)
  if req.path:sub(1, 5) == "/img/" then
    local serve = IMAGES[req.path]
    if serve then return serve(respond) end
    return json(respond, 404, { code = 404, message = "no such image" })
  end
  local scenario, call = req.path:match("^/([^/]+)/api/v1/task/(%a+)$")
  if not scenario then return json(respond, 404, { code = 404, message = "not found" }) end
  local status = tonumber(scenario:match("^status%-(%d%d%d)$"))
  if status then
    return json(respond, status, { code = status, message = "status " .. status },
      status == 429 and { ["Retry-After"] = "1" } or nil)
  end
  if BOTH[scenario] then return BOTH[scenario](req, respond) end
  if call == "create" then return json(respond, 200, { code = 200, message = "ok", task_id = ID }) end
  local n = tonumber(scenario:match("^name%-(%d+)$"))
  if n then return success(respond, { image("/img/ok", NAMES[n]) }) end
  if GET[scenario] then return GET[scenario](req, respond) end
  json(respond, 404, { code = 404, message = "no scenario " .. scenario })
end

-- "Another host": records everything, serves the image, and tempts with a plausible answer.
local function handle_b(req, respond)
  record("B", req)
  if req.path == "/img/ok" then return IMAGES["/img/ok"](respond) end
  json(respond, 200, { code = 200, message = "ok", task_id = ID,
    nano_banana_pro_output = { task_id = ID, status = "success", images = { image("/img/ok", "stolen.png") } } })
end

a = assert(server.new{ port = 0, handler = handle_a, max_body = 1024 * 1024 })
b = assert(server.new{ port = 0, handler = handle_b, loop = a.loop })
io.stdout:write(a:url(), " ", b:url(), "\n")
io.stdout:flush()
while true do a.loop:step(1) end
]==]

local Fake = {}
Fake.__index = Fake

local function start_fake(outside)
  local names = {}
  for i, row in ipairs(NAME_ROWS) do names[i] = row[2]:gsub("^OUTSIDE", outside) end
  local child = spawn(FAKE, { TASK_ID, tostring(output.MAX_IMAGES), core.json_encode(names) })
  local line = child.pipe:read("*l")
  local a, b = (line or ""):match("^(http://%S+) (http://%S+)$")
  if not a then error("the fake service did not start: " .. tostring(line) .. reap(child)) end
  return setmetatable({ child = child, a = a, b = b }, Fake)
end

function Fake:get(path)
  local http = require "socket.http"
  local body, status = http.request(self.a .. path)
  assert(status == 200, "fake service: " .. tostring(status))
  return body
end

--- Every request A and B received since the last clear(): {server, method, target, headers, body}.
function Fake:seen()
  return core.json_decode(self:get("/_seen"))
end

function Fake:clear()
  self:get("/_clear")
end

function Fake:stop()
  return reap(self.child)
end
-- }=====================================================================

describe("dh3 security", function()
  local fake, outside
  setup(function()
    outside = tmpdir()
    fake = start_fake(outside)
  end)
  teardown(function()
    fake:stop()
    rm_rf(outside)
  end)

  describe("TLS", function()
    local dir, emu, wrong_cert, wrong_key
    setup(function()
      dir = tmpdir()
      local cert, key = make_cert(dir, "good", "DNS:localhost,IP:127.0.0.1")
      wrong_cert, wrong_key = make_cert(dir, "wrong", "DNS:other.example")
      emu = emulator.start{ keys = false, "--keys", KEY, "--queue-time", "0", "--process-time", "0.1",
        "--tls-cert", cert, "--tls-key", key }
    end)
    teardown(function()
      emu:stop()
      rm_rf(dir)
    end)
    before_each(function() emu:reset() end)

    it("the emulator serves HTTPS with the certificate it is given", function()
      assert.matches("^https://127%.0%.0%.1:%d+$", emu.url)
      assert.are.equal(0, emu:stats().creates) -- read over https, trusting the certificate
    end)

    it("refuses a self-signed certificate by default: a network error naming it, not retried, nothing sent", function()
      local infos = {}
      local client = new_client(emu.url, { max_retries = 3,
        on_request = function(info) infos[#infos + 1] = info end })
      finally(function() client:close() end)
      local task, err = client:create{ prompt = "over https, untrusted" }
      assert.is_nil(task)
      assert.are.equal("network", err.kind)
      assert.are.equal("PEER_FAILED_VERIFICATION", err.curl_error)
      assert.matches("certificate", err.message)
      assert.is_falsy(err.maybe_created) -- the handshake failed: no request left
      assert.is_falsy(err.retryable)
      local _, serr = client:task(TASK_ID):status()
      assert.are.equal("PEER_FAILED_VERIFICATION", serr.curl_error)
      assert.are.equal(2, #infos) -- one attempt each: a refused certificate stays refused
      local stats = emu:stats()
      assert.are.equal(0, stats.creates)
      assert.are.same({}, stats.requests)
    end)

    it("refuses a trusted certificate made out to another name", function()
      local other = emulator.start{ keys = false, "--keys", KEY, "--tls-cert", wrong_cert, "--tls-key", wrong_key }
      local client = new_client(other.url, { ca_file = wrong_cert })
      finally(function() client:close() end)
      local task, err = client:create{ prompt = "over https, wrong name" }
      local creates = other:stats().creates
      other:stop()
      assert.is_nil(task)
      assert.are.equal("network", err.kind)
      assert.are.equal("PEER_FAILED_VERIFICATION", err.curl_error)
      assert.matches("127%.0%.0%.1", err.message)
      assert.are.equal(0, creates)
    end)

    it("fails closed when ca_file cannot be read", function()
      local client = new_client(emu.url, { ca_file = dir .. "/missing.crt" })
      finally(function() client:close() end)
      local task, err = client:create{ prompt = "over https, no trust" }
      assert.is_nil(task)
      assert.are.equal("network", err.kind)
      assert.are.equal("SSL_CACERT_BADFILE", err.curl_error)
      assert.are.equal(0, emu:stats().creates)
    end)

    it("works end to end with ca_file: create, wait and download over https", function()
      local client = new_client(emu.url, { ca_file = emu.ca_file })
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "over https, trusted" })
      assert(task:wait{ interval = 0.1, timeout = 10 })
      assert.matches("^https://127%.0%.0%.1:%d+/files/", task.images[1].url)
      local out = tmpdir()
      local paths = assert(task:download(out))
      local bytes = read_file(paths[1])
      rm_rf(out)
      assert.are.equal(task.images[1].file_size, #bytes)
      assert.are.equal("\137PNG", bytes:sub(1, 4))
      local stats = emu:stats()
      assert.are.equal(1, stats.creates)
      assert.are.equal(1, stats.requests["GET /files"]["200"])
      assert.are.equal(0, stats.files_with_auth)
    end)

    it("has no switch that turns verification off, in the client or in its C core", function()
      local switches = { insecure = true, verify = false, ssl_verify = false, verify_peer = false,
        verify_host = false, ssl_verifypeer = false, ssl_verifyhost = false, tls_verify = false,
        no_verify = true, skip_verify = true }
      local engine = core.engine{}
      finally(function() engine:close() end)
      for name, value in pairs(switches) do
        local ok, err = pcall(dh3.new, { api_key = KEY, base_url = emu.url, [name] = value })
        assert.is_false(ok, name)
        assert.matches(name, tostring(err), 1, true)
        assert.is_false(pcall(core.engine, { [name] = value }), name)
        assert.is_false(pcall(engine.request, engine, { url = emu.url, [name] = value }), name)
      end
    end)
  end)

  describe("the API key", function()
    local emu, dir
    setup(function()
      emu = emulator.start{ keys = false, "--keys", KEY, "--queue-time", "0", "--process-time", "0.1",
        "--create-qps", "0" }
    end)
    teardown(function() emu:stop() end)
    before_each(function()
      emu:reset()
      fake:clear()
      dir = tmpdir()
    end)
    after_each(function() rm_rf(dir) end)

    -- name, kind, fn(c) -> nil, err; c.client(base, opts) makes a client that records its hooks.
    local failures = {
      { "a key the service refuses (401)", "auth", function(c)
        return c.client(emu.url, { api_key = WRONG_KEY }):create{ prompt = "wrong key" }
      end },
      { "an unknown task (404)", "not_found", function(c)
        return c.client(emu.url):task(TASK_ID):status()
      end },
      { "a refused connection", "network", function(c)
        return c.client("http://127.0.0.1:" .. closed_port()):create{ prompt = "nobody there" }
      end },
      { "a request that times out", "timeout", function(c)
        return c.client(fake.a .. "/slow", { timeout = 0.3 }):task(TASK_ID):status()
      end },
      { "an answer that is not JSON", "protocol", function(c)
        return c.client(fake.a .. "/garbage"):task(TASK_ID):status()
      end },
      { "a server error (500)", "server", function(c)
        return c.client(fake.a .. "/status-500"):task(TASK_ID):status()
      end },
      { "a rate limit (429)", "rate_limited", function(c)
        return c.client(fake.a .. "/status-429"):create{ prompt = "too fast" }
      end },
      { "no credits (402)", "insufficient_credits", function(c)
        return c.client(fake.a .. "/status-402"):create{ prompt = "no money" }
      end },
      { "a redirect (302)", nil, function(c)
        return c.client(fake.a .. "/redirect"):task(TASK_ID):status()
      end },
      { "input refused before sending", "invalid_request", function(c)
        return c.client(emu.url):create{ prompt = "hi" }
      end },
      { "a failed task", "task_failed", function(c)
        local task = assert(c.client(emu.url):create{ prompt = "doomed {emu:fail=Upstream model error}" })
        return task:wait{ interval = 0.1, timeout = 10 }
      end },
      { "a wait that times out", "timeout", function(c)
        local task = assert(c.client(emu.url):create{ prompt = "slow {emu:process=30}" })
        return task:wait{ interval = 0.1, timeout = 0.3 }
      end },
      { "a cancelled wait", "cancelled", function(c)
        local task = assert(c.client(emu.url):create{ prompt = "cancelled {emu:process=30}" })
        return task:wait{ interval = 0.1, timeout = 10, on_update = function(t) t:cancel() end }
      end },
      { "a download the image host refuses (404)", "not_found", function(c)
        local task = c.client(fake.a .. "/imgmissing"):task(TASK_ID)
        assert(task:status())
        return task:download(dir)
      end },
      { "a base_url that is not http(s)", "invalid_request", function()
        return dh3.new{ api_key = KEY, base_url = "ftp://127.0.0.1/" }
      end },
      { "a key with a control character", "auth", function()
        return dh3.new{ api_key = KEY .. "\n", base_url = emu.url }
      end },
    }
    for _, row in ipairs(failures) do
      local name, kind, fn = row[1], row[2], row[3]
      it("is in no error of " .. name .. ", nor in the hooks' infos or tostring(client)", function()
        local clients, infos = {}, {}
        local c = { client = function(base, opts)
          opts = opts or {}
          opts.on_request = function(info) infos[#infos + 1] = info end
          local client = new_client(base, opts)
          clients[#clients + 1] = client
          return client
        end }
        local ok, err = fn(c)
        assert.is_nil(ok)
        if kind then assert.are.equal(kind, err.kind) end
        assert_no_secret(err, "err")
        assert_no_secret(tostring(err), "tostring(err)")
        assert_no_secret(infos, "on_request infos")
        for _, client in ipairs(clients) do
          assert_no_secret(tostring(client), "tostring(client)")
          client:close()
        end
        if #clients > 0 and kind ~= "invalid_request" then assert.is_true(#infos > 0) end
      end)
    end

    it("is not printed by the dh3 command when it fails", function()
      local runs = {
        { 3, WRONG_KEY, emu.url, "generate", "refused key" },
        { 1, KEY, emu.url, "generate", "doomed {emu:fail=Upstream model error}" },
        { 3, KEY, "http://127.0.0.1:" .. closed_port(), "generate", "nobody there" },
        { 3, KEY, emu.url, "status", TASK_ID },
        { 3, KEY, fake.a .. "/garbage", "status", TASK_ID },
        { 2, KEY, emu.url, "generate", "hi" },
      }
      for _, run in ipairs(runs) do
        local words = { "env -u DH3_API_KEY -u DH3_BASE_URL", "DH3_API_KEY=" .. sh(run[2]),
          "DH3_BASE_URL=" .. sh(run[3]), lua.command("bin/dh3", run[4], run[5]) }
        if run[4] == "generate" then words[#words + 1] = "--out " .. sh(dir .. "/") end
        for _, json in ipairs({ false, true }) do
          local p = assert(lua.popen(table.concat(words, " ") .. (json and " --json" or "") .. " 2>&1"))
          local out = p:read("*a")
          local _, _, code = p:close()
          local what = ("dh3 %s %q%s"):format(run[4], run[5], json and " --json" or "")
          assert.are.equal(run[1], code, what .. ": " .. out)
          assert.is_true(#out > 0, what)
          assert_no_secret(out, what)
        end
      end
    end)

    it("is not written to the journal, even in the error of an abandoned create", function()
      local path = dir .. "/dh3.journal"
      with_client(new_client(emu.url, { journal = path }), function(client)
        local task = assert(client:create{ prompt = "journaled" })
        assert(task:wait{ interval = 0.1, timeout = 10 })
        local failed = assert(client:create{ prompt = "journaled {emu:fail=boom}" })
        assert.is_nil(failed:wait{ interval = 0.1, timeout = 10 })
      end)
      with_client(new_client(emu.url, { journal = path, api_key = WRONG_KEY }), function(client)
        local _, err = client:create{ prompt = "journaled, refused" }
        assert.are.equal("auth", err.kind)
      end)
      local text = read_file(path)
      assert.matches("journaled, refused", text) -- the abandoned intent is there
      for _, name in ipairs(ls(dir)) do assert_no_secret(read_file(dir .. "/" .. name), name) end
    end)

    it("travels only in the Authorization header of API requests: no URL, body or other header, no image request", function()
      local client = new_client(fake.a .. "/ok")
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "where does the key go" })
      assert(task:status())
      assert(task:download(dir))
      assert(task:read())
      local seen = fake:seen()
      local api, images = 0, 0
      for _, r in ipairs(seen) do
        assert.are.equal("A", r.server)
        local auth = r.headers.authorization
        r.headers.authorization = nil
        assert_no_secret(r, r.method .. " " .. r.target)
        if r.target:find("^/img/") then
          images = images + 1
          assert.is_nil(auth, r.target)
        else
          api = api + 1
          assert.are.equal("Bearer " .. KEY, auth)
        end
      end
      assert.are.equal(2, api)
      assert.are.equal(2, images)
    end)

    it("leaves a User-Agent that names dh3 and libcurl only, not every library libcurl was built with", function()
      local client = new_client(fake.a .. "/ok")
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "who is asking" })
      assert(task:status())
      local seen = fake:seen()
      assert.are.equal(2, #seen)
      for _, r in ipairs(seen) do
        assert.are.equal(("dh3-lua/%s %s"):format(dh3.VERSION, core.curl_version:match("^%S+")),
          r.headers["user-agent"])
      end
    end)

    it("is in no URL: the emulator's request log shows none", function()
      local logged = emulator.start{ keys = false, "--keys", KEY, "--queue-time", "0", "--process-time", "0.1",
        "--log" }
      local client = new_client(logged.url)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "logged" })
      assert(task:wait{ interval = 0.1, timeout = 10 })
      assert(task:download(dir))
      client:task(TASK_ID):status()
      local log = logged:stop()
      assert.matches("POST /api/v1/task/create %-> 200", log)
      assert.matches("GET /api/v1/task/get%?task_id=" .. task.id .. " %-> 200", log)
      assert_no_secret(log, "the emulator's log")
    end)

    it("is never sent to the image host", function()
      local client = new_client(emu.url)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "an image for a third party" })
      assert(task:wait{ interval = 0.1, timeout = 10 })
      assert(task:download(dir))
      assert(task:read())
      local stats = emu:stats()
      assert.are.equal(2, stats.requests["GET /files"]["200"])
      assert.are.equal(0, stats.files_with_auth)
    end)

    it("is not sent along a redirect to another host: API redirects are not followed at all", function()
      local client = new_client(fake.a .. "/redirect")
      finally(function() client:close() end)
      local task, err = client:create{ prompt = "redirected" }
      assert.is_nil(task)
      assert.are.equal(302, err.http_status)
      assert.matches("HTTP 302", tostring(err))
      assert.is_falsy(err.maybe_created)
      local _, serr = client:task(TASK_ID):status()
      assert.are.equal(302, serr.http_status)
      local seen = fake:seen()
      assert.are.equal(2, #seen)
      for _, r in ipairs(seen) do assert.are.equal("A", r.server) end
    end)

    it("is not sent when an image download is redirected to another host", function()
      local client = new_client(fake.a .. "/imgelsewhere")
      finally(function() client:close() end)
      local task = client:task(TASK_ID)
      assert(task:status())
      local paths = assert(task:download(dir))
      assert.are.equal(("dh3-image-bytes!"):rep(64), read_file(paths[1]))
      local from_b = 0
      for _, r in ipairs(fake:seen()) do
        if r.server == "B" then
          from_b = from_b + 1
          assert.are.equal("/img/ok", r.target)
          assert.is_nil(r.headers.authorization)
        end
      end
      assert.are.equal(1, from_b)
    end)

    it("an image redirected to a file: URL is refused and nothing is written", function()
      local client = new_client(fake.a .. "/imgfile")
      finally(function() client:close() end)
      local task = client:task(TASK_ID)
      assert(task:status())
      local paths, err = task:download(dir)
      assert.is_nil(paths)
      assert.are.equal("network", err.kind)
      assert.are.equal("UNSUPPORTED_PROTOCOL", err.curl_error)
      assert.are.same({}, ls(dir))
    end)
  end)

  describe("caps on what a server controls", function()
    local function status_of(scenario)
      return with_client(new_client(fake.a .. "/" .. scenario), function(client)
        local task = client:task(TASK_ID)
        local state, err = task:status()
        return state, err, task
      end)
    end

    it("an API answer over the body cap (4 MiB) is a protocol error", function()
      local state, err = status_of("bigbody")
      assert.is_nil(state)
      assert.are.equal("protocol", err.kind)
      assert.matches("larger than the client accepts", err.message)
      local client = new_client(fake.a .. "/bigbody")
      finally(function() client:close() end)
      local task, cerr = client:create{ prompt = "a huge answer" }
      assert.is_nil(task)
      assert.are.equal("protocol", cerr.kind)
      assert.is_true(cerr.maybe_created) -- an answer came: the task may exist
    end)

    it("response headers over 16 KiB are a protocol error", function()
      local state, err = status_of("bigheaders")
      assert.is_nil(state)
      assert.are.equal("protocol", err.kind)
    end)

    it("JSON nested 10000 deep is a protocol error, in an answer and in a callback body", function()
      local state, err = status_of("deep")
      assert.is_nil(state)
      assert.are.equal("protocol", err.kind)
      local deep = '{"code":200,"nano_banana_pro_output":' .. ("["):rep(10000) .. ("]"):rep(10000) .. "}"
      local result, werr = webhook.parse(deep)
      assert.is_nil(result)
      assert.are.equal("protocol", werr.kind)
    end)

    it("more than MAX_IMAGES images is a protocol error; MAX_IMAGES are read", function()
      local state, err = status_of("manyimages")
      assert.is_nil(state)
      assert.are.equal("protocol", err.kind)
      assert.matches("too many images", err.message)
      local ok_state, ok_err, task = status_of("maximages")
      assert.are.equal("success", ok_state, tostring(ok_err))
      assert.are.equal(output.MAX_IMAGES, #task.images)
    end)

    it("a download larger than file_size is refused, the destination untouched", function()
      local dir = tmpdir()
      local dest = dir .. "/big.png"
      write_file(dest, "the file that was there")
      local client = new_client(fake.a .. "/oversize")
      finally(function() client:close() end)
      local task = client:task(TASK_ID)
      assert(task:status())
      local paths, err = task:download(dest)
      assert.is_nil(paths)
      assert.are.equal("protocol", err.kind)
      assert.are.equal("the file that was there", read_file(dest))
      assert.are.same({}, temp_files(dir))
      local bytes, rerr = task:read() -- in memory, the same cap
      assert.is_nil(bytes)
      assert.are.equal("protocol", rerr.kind)
      rm_rf(dir)
    end)
  end)

  describe("file names from the service", function()
    local base, dir
    before_each(function()
      base = tmpdir()
      dir = base .. "/a/b"
      assert(lua.execute("mkdir -p " .. sh(dir)))
    end)
    after_each(function() rm_rf(base) end)

    local function download(i, dest)
      return with_client(new_client(fake.a .. "/name-" .. i), function(client)
        local task = client:task(TASK_ID)
        assert(task:status())
        return assert(task:download(dest or dir))
      end)
    end

    for i, row in ipairs(NAME_ROWS) do
      it(("end up as a safe name inside the folder: %s"):format(row[1]), function()
        local paths = download(i)
        assert.are.same({ dir .. "/" .. row[3] }, paths)
        assert.are.same({ row[3] }, ls(dir))
        assert.are.equal(("dh3-image-bytes!"):rep(64), read_file(paths[1]))
        assert.are.same({ "a" }, ls(base))
        assert.are.same({ "b" }, ls(base .. "/a"))
        assert.are.same({}, ls(outside))
      end)
    end

    it("neither write through nor replace a symbolic link already at the destination", function()
      local target = outside .. "/precious"
      write_file(target, "precious")
      assert(lua.execute(("ln -s %s %s"):format(sh(target), sh(dir .. "/evil.png"))))
      local paths = download(1) -- "../../evil.png", made "evil.png", which is taken
      assert.are.equal(dir .. "/evil-2.png", paths[1])
      assert.are.equal("precious", read_file(target))
      assert.is_true(lua.execute("test -L " .. sh(dir .. "/evil.png")))
      assert.is_true(lua.execute("test -f " .. sh(paths[1]) .. " && test ! -L " .. sh(paths[1])))
      os.remove(target)
    end)
  end)

  describe("the webhook receiver", function()
    -- Floods the receiver at URL from a child process: HELD connections left half-open (silent, or
    -- a head and part of a body), then bad requests of every kind, each on a connection of its own,
    -- until the file STOP exists (two minutes at most); prints what came back, one "kind status" a
    -- line; touches DONE at the end.
    local FLOOD = [==[
local socket = require "socket"
local url, held_n, stop, done, task_id = arg[1], tonumber(arg[2]), arg[3], arg[4], arg[5]
local host, port, path = url:match("^http://([^:/]+):(%d+)(/.*)$")
local counts = {}
local function connect()
  local c = socket.tcp()
  c:settimeout(3)
  if not c:connect(host, tonumber(port)) then c:close() return nil end
  return c
end
local function exchange(kind, data)
  local c = connect()
  local status = "noconnect"
  if c then
    c:send(data)
    local line = c:receive("*l")
    status = line and line:match("^HTTP/1%.1 (%d+)") or "none"
    c:close()
  end
  local key = kind .. " " .. status
  counts[key] = (counts[key] or 0) + 1
end
local held = {}
for i = 1, held_n do
  local c = connect()
  if c then
    if i % 2 == 0 then c:send("POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"partial") end
    held[#held + 1] = c
  end
end
io.stdout:write("held ", #held, "\n")
io.stdout:flush()
local forged = '{"code":200,"nano_banana_pro_output":{"task_id":"' .. task_id .. '","status":"fail","err_msg":"forged"}}'
local function post(p, body, extra)
  return "POST " .. p .. " HTTP/1.1\r\nHost: x\r\n" .. (extra or "") .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end
math.randomseed(7)
local function stopped()
  local f = io.open(stop, "r")
  if f then f:close() end
  return f ~= nil
end
local t_end = socket.gettime() + 120
while socket.gettime() < t_end and not stopped() do
  socket.sleep(0.005)
  local junk = {}
  for i = 1, 200 do junk[i] = string.char(math.random(0, 255)):gsub("[\r\n]", "x") end
  exchange("garbage", table.concat(junk) .. "\r\n\r\n")
  exchange("get", "GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n")
  exchange("delete", "DELETE " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n")
  exchange("wrongpath", post(path:gsub("/[^/]*$", "/" .. ("0"):rep(32)), forged))
  exchange("nosecret", post(path:gsub("/[^/]*$", ""), forged))
  exchange("oversize", "POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
  exchange("bigheader", "POST " .. path .. " HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("x"):rep(20000) .. "\r\n\r\n")
  exchange("http2", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
  exchange("badbody", post(path, "not json"))
end
for _, c in ipairs(held) do c:close() end
local keys = {}
for k in pairs(counts) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do io.stdout:write(k, " ", counts[k], "\n") end
io.stdout:flush() -- before saying done: the parent stops this process as soon as it sees that
io.open(done, "w"):close()
]==]

    local emu
    setup(function()
      emu = emulator.start{ keys = false, "--keys", KEY, "--queue-time", "0", "--process-time", "0.1",
        "--callback-retry-delay", "0.3" }
    end)
    teardown(function() emu:stop() end)

    it("keeps serving good deliveries through a flood of bad requests and half-open connections", function()
      local client = new_client(emu.url)
      finally(function() client:close() end)
      local listener = assert(client:listen{})
      -- the task ends in 2 s (longer on a slow run: the flood must start well before it)
      local task = assert(client:create{ prompt = ("delivered through a flood {emu:process=%g}"):format(2 * SLOW) })
      local done, stop = os.tmpname(), os.tmpname()
      os.remove(done)
      os.remove(stop)
      local flood = spawn(FLOOD, { listener.url, "200", stop, done, task.id })
      assert.matches("^held 200", flood.pipe:read("*l"))
      -- the delivery comes while the flood goes on; polls an hour apart cannot end the wait
      -- before its timeout: only the delivery can
      local at_delivery
      assert(task:wait{ interval = 3600, timeout = 120, on_update = function(t)
        if t.state == "success" then
          at_delivery = { open = listener:connections(), not_found = listener.counts.not_found }
        end
      end })
      -- the cap holds through 200 half-open connections
      assert.is_true(at_delivery.open <= 64, tostring(at_delivery.open))
      -- the flood goes on after the delivery, served all the while, until 20 more were turned away
      local deadline = core.now() + 60
      while listener.counts.not_found < at_delivery.not_found + 20 do
        assert(core.now() < deadline, "the flood was not served after the delivery")
        client:sleep(0.02)
      end
      write_file(stop, "")
      deadline = core.now() + 20
      while not io.open(done) do -- serving the flood meanwhile
        assert(core.now() < deadline, "the flood did not end")
        client:sleep(0.02)
      end
      os.remove(done)
      os.remove(stop)
      local summary = reap(flood)
      local got = {}
      for kind, status, n in summary:gmatch("(%S+) (%S+) (%d+)\n") do got[kind .. " " .. status] = tonumber(n) end
      for kind, status in pairs{ garbage = "400", get = "404", delete = "404", wrongpath = "404",
        nosecret = "404", oversize = "413", bigheader = "431", http2 = "505", badbody = "200" } do
        assert.is_true((got[kind .. " " .. status] or 0) >= 10, kind .. " " .. status .. " in:\n" .. summary)
      end
      assert.are.equal("success", task.state) -- not the forged fail
      assert.are.equal(1, listener.counts.accepted)
      -- bad requests came before the delivery (and went on after it: see above)
      assert.is_true(at_delivery.not_found >= 20, tostring(at_delivery.not_found))
      assert.is_true(listener.counts.refused >= 10)
      -- and after it, the next delivery is served too (again the only way the wait can end)
      local again = assert(client:create{ prompt = "after the flood" })
      assert(again:wait{ interval = 3600, timeout = 120 })
      assert.are.equal(2, listener.counts.accepted)
    end)
  end)
end)
