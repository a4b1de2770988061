-- A create leaves exactly once per attempt that dh3 decides on: no layer below (libcurl's own
-- "the reused connection died, send it again" retry) may send it a second time.
local dh3 = require "dh3"
local core = require "dh3.core"
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"

-- the test servers stand in for the service, as the emulator does: they run under Lua 5.4
local LUA = lua.emulator
local KEY = "create-once-key-0123456789"

-- A raw HTTP/1.1 keep-alive server: create 1 is answered (Connection: keep-alive), create 2 is
-- read in full and then its connection is closed without an answer, later creates are answered
-- again. GET /_count answers {"creates": N}. It prints its port, then serves until killed.
local SERVER = [==[
local socket = require "socket"
local listener = assert(socket.bind("127.0.0.1", 0))
listener:settimeout(0)
local _, port = listener:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()

local creates = 0
local clients = {}

local function reply(c, status, body, close)
  c:send(("HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s")
    :format(status, #body, close and "close" or "keep-alive", body))
end

-- Reads one request from c (its whole head and body); nil when the peer closed.
local function read_request(c)
  c:settimeout(5)
  local line = c:receive("*l")
  if not line then return nil end
  local length = 0
  while true do
    local h = c:receive("*l")
    if not h then return nil end
    if h == "" then break end
    local n = h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
    if n then length = tonumber(n) end
  end
  if length > 0 and not c:receive(length) then return nil end
  return line
end

local function forget(c)
  for i, x in ipairs(clients) do
    if x == c then table.remove(clients, i) break end
  end
  c:close()
end

while true do
  local ready = socket.select({ listener, (table.unpack or unpack)(clients) }, nil, 1)
  for _, s in ipairs(ready) do
    if s == listener then
      local c = listener:accept()
      if c then clients[#clients + 1] = c end
    else
      local line = read_request(s)
      if not line then
        forget(s)
      elseif line:match("^POST /api/v1/task/create ") then
        creates = creates + 1
        if creates == 2 then
          forget(s) -- taken, then the connection dies unanswered
        else
          reply(s, "200 OK", ('{"code":200,"message":"ok","task_id":"%032x"}'):format(creates))
        end
      elseif line:match("^GET /_count ") then
        reply(s, "200 OK", ('{"creates":%d}'):format(creates), true)
        forget(s)
      else
        reply(s, "404 Not Found", '{"code":404,"message":"not found"}', true)
        forget(s)
      end
    end
  end
end
]==]

-- The same over TLS, speaking HTTP/2 and HTTP/1.1 (ALPN), in node (its http2 module): create 2 is
-- read, then its connection destroyed unanswered. GET /_count answers {creates, versions}: the
-- HTTP version of each create and of each other request. Argument: key file, certificate file.
local H2_SERVER = [==[
const http2 = require("http2"), fs = require("fs");
let creates = 0;
const versions = { create: [], read: [] };
const json = (res, doc) => {
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify(doc));
};
const server = http2.createSecureServer({
  key: fs.readFileSync(process.argv[2]), cert: fs.readFileSync(process.argv[3]), allowHTTP1: true,
}, (req, res) => {
  req.resume();
  req.on("end", () => {
    if (req.method === "POST" && req.url === "/api/v1/task/create") {
      creates++;
      versions.create.push(req.httpVersion);
      if (creates === 2) return (req.stream ? req.stream.session : req.socket).destroy();
      json(res, { code: 200, message: "ok", task_id: creates.toString(16).padStart(32, "0") });
    } else if (req.url === "/_count") {
      json(res, { creates: creates, versions: versions });
    } else {
      versions.read.push(req.httpVersion);
      json(res, { code: 200, message: "Ok",
                  nano_banana_pro_output: { task_id: "0".repeat(32), status: "queuing" } });
    }
  });
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
]==]

-- Starts `interpreter script args...` (a helper process, not under test: without the sanitizer
-- `make asan` preloads), which prints its port. Returns {url, count(), stop()}; count() is the
-- decoded GET /_count.
local function start_server(interpreter, script, args, scheme)
  local path = os.tmpname()
  files.write_file(path, script)
  local words = { "echo $$; exec env -u LD_PRELOAD", interpreter, files.quote(path) }
  for _, a in ipairs(args or {}) do words[#words + 1] = files.quote(a) end
  local pipe = assert(io.popen(table.concat(words, " ") .. " 2>&1", "r"))
  local pid = tonumber(pipe:read("*l"))
  local line = pipe:read("*l")
  local port = tonumber(line)
  assert(pid and port, "the test server did not start: " .. tostring(line))
  local server = { url = (scheme or "http") .. "://127.0.0.1:" .. port }
  function server.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    pipe:read("*a")
    pipe:close()
    os.remove(path)
  end
  return server
end

-- GET url (http, or https trusting ca_file) with luasocket/luasec, independent of the client under
-- test: the decoded answer.
local function get_json(url, ca_file)
  local https = url:match("^https:") ~= nil
  local http = require(https and "ssl.https" or "socket.http")
  local ltn12 = require "ltn12"
  local out = {}
  local _, status = http.request{ url = url, sink = ltn12.sink.table(out),
                                  cafile = ca_file, verify = https and "peer" or nil }
  assert(status == 200, url .. ": " .. tostring(status))
  return core.json_decode(table.concat(out))
end

local function make_cert(dir)
  local key, cert = dir .. "/server.key", dir .. "/server.crt"
  assert(lua.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 1 -subj /CN=localhost "
    .. "-addext subjectAltName=IP:127.0.0.1 2>/dev/null"):format(files.quote(key), files.quote(cert))),
    "openssl could not make a certificate")
  return key, cert
end

describe("a create", function()
  describe("over HTTP/1.1 keep-alive, when the server takes it and closes the connection unanswered", function()
    local server
    before_each(function() server = start_server(LUA, SERVER) end)
    after_each(function() server.stop() end)

    it("is sent once: nil, err with maybe_created, never re-sent by libcurl on a new connection", function()
      local client = assert(dh3.new{ api_key = KEY, base_url = server.url, max_retries = 3,
                                     retry_delay = 0.01 })
      finally(function() client:close() end)
      local first = assert(client:create{ prompt = "one" })
      assert.are.equal(("%032x"):format(1), first.id)

      local second, err = client:create{ prompt = "two" }
      assert.is_nil(second, "the second create returned a task: libcurl sent it again")
      assert.are.equal("network", err.kind)
      assert.is_true(err.maybe_created)
      assert.is_false(err.retryable)
      assert.are.equal(2, get_json(server.url .. "/_count").creates)

      -- the next create is sent (once) and answered as usual
      local third = assert(client:create{ prompt = "three" })
      assert.are.equal(("%032x"):format(3), third.id)
      assert.are.equal(3, get_json(server.url .. "/_count").creates)
    end)
  end)

  describe("against a server that speaks HTTP/2", function()
    local has_node = lua.execute("command -v node >/dev/null 2>&1")
    local dir, server, cert
    before_each(function()
      if not has_node then return end
      dir = files.tmpdir()
      local key
      key, cert = make_cert(dir)
      server = start_server("node", H2_SERVER, { key, cert }, "https")
    end)
    after_each(function()
      if server then server.stop() end
      if dir then files.rm_rf(dir) end
      server, dir = nil, nil
    end)

    it("goes over HTTP/1.1 on a connection of its own, never joins the reads' HTTP/2 connection, and is sent once", function()
      if not has_node then
        pending("needs node (its http2 module) for an HTTP/2 server; creates use HTTP/1.1 in any case")
        return
      end
      local client = assert(dh3.new{ api_key = KEY, base_url = server.url, ca_file = cert,
                                     max_retries = 3, retry_delay = 0.01 })
      finally(function() client:close() end)
      local reader = client:task(("0"):rep(32))
      assert.are.equal("queuing", assert(reader:status())) -- opens an HTTP/2 connection
      assert(client:create{ prompt = "one" })
      local second, err = client:create{ prompt = "two" } -- its connection is destroyed unanswered
      assert.is_nil(second)
      assert.is_true(err.maybe_created)
      assert(reader:status())
      local count = get_json(server.url .. "/_count", cert)
      assert.are.equal(2, count.creates)
      assert.are.same({ "1.1", "1.1" }, count.versions.create)
      assert.are.same({ "2.0", "2.0" }, count.versions.read)
    end)
  end)

  describe("in the C core", function()
    local emu, e
    lazy_setup(function() emu = emulator.start{ "--queue-time", "0", "--process-time", "0" } end)
    lazy_teardown(function() emu:stop() end)
    before_each(function() e = core.engine() end)
    after_each(function() e:close() end)

    local function fetch(opts)
      local req = assert(e:request(opts))
      while true do
        e:perform(0.05)
        local res = e:next_done()
        if res then
          assert.are.equal(req, res.request)
          return res, req:info()
        end
      end
    end

    it("goes out on a connection of its own, while the reads before and after it share one", function()
      local headers = { "Authorization: Bearer " .. emu.key, "Content-Type: application/json" }
      local get = { url = emu.url .. "/api/v1/task/get?task_id=" .. ("0"):rep(32), headers = headers }
      local post = { method = "POST", url = emu.url .. "/api/v1/task/create", headers = headers,
                     body = core.json_encode{ model = "nano-banana-pro", nano_banana_pro_input = { prompt = "a cat" } } }
      local _, info = fetch(get)
      assert.are.equal(1, info.connects) -- the first request opens the connection
      _, info = fetch(get)
      assert.are.equal(0, info.connects) -- a read reuses it
      local res
      res, info = fetch(post)
      assert.are.equal(200, res.status)
      assert.are.equal(1, info.connects) -- a create never does
      assert.are.equal("1.1", info.http_version)
      _, info = fetch(get)
      assert.are.equal(0, info.connects) -- and nothing of the create stays on the pooled handle
    end)
  end)
end)
