-- dh3.http1: the HTTP/1.1 framing both servers share (the webhook receiver's dh3.httpd and the
-- emulator's), checked on its own, without a socket.
local http1 = require "dh3.http1"

local function head_fields(head)
  local lines = {}
  for line in head:gmatch("([^\r\n]*)\r\n") do lines[#lines + 1] = line end
  assert.are.equal("", lines[#lines]) -- the blank line that ends a head
  lines[#lines] = nil
  local fields = assert(http1.parse_headers(lines, 2))
  return lines[1], fields
end

describe("dh3.http1", function()
  describe("parse_request", function()
    it("splits the request line, the target and the fields", function()
      local req = assert(http1.parse_request{ "POST /hook/abc?x=1&y=2 HTTP/1.1", "Host: h", "X-A: 1", "x-a: 2" })
      assert.are.same({ "POST", "/hook/abc?x=1&y=2", "/hook/abc", "x=1&y=2", "1.1" },
        { req.method, req.target, req.path, req.query, req.version })
      assert.are.same({ host = "h", ["x-a"] = "1, 2" }, req.headers)
    end)

    it("reads the path of an absolute-form target, and takes OPTIONS *", function()
      assert.are.equal("/a/b", assert(http1.parse_request{ "GET http://example.test:8080/a/b?q HTTP/1.1" }).path)
      assert.are.equal("/", assert(http1.parse_request{ "GET https://example.test HTTP/1.1" }).path)
      assert.are.equal("*", assert(http1.parse_request{ "OPTIONS * HTTP/1.1" }).path)
      assert.is_nil(assert(http1.parse_request{ "GET /x HTTP/1.0" }).query)
    end)

    it("refuses what a server must not guess at, with the status to answer", function()
      for line, status in pairs{
        ["GET /x"] = 400, ["GET  /x HTTP/1.1"] = 400, ["G(T /x HTTP/1.1"] = 400,
        ["GET /x HTTP/2.0"] = 505, ["GET x HTTP/1.1"] = 400, ["GET * HTTP/1.1"] = 400,
      } do
        local req, problem = http1.parse_request{ line }
        assert.is_nil(req, line)
        assert.are.equal(status, problem.status, line)
      end
      local _, problem = http1.parse_request{ "GET / HTTP/1.1", " folded: line" }
      assert.are.equal(400, problem.status)
      _, problem = http1.parse_request{ "GET / HTTP/1.1", "Content-Length: 1", "Content-Length: 2" }
      assert.are.equal(400, problem.status)
    end)
  end)

  it("keeps HTTP/1.1 open unless told to close, HTTP/1.0 only when told to keep it", function()
    local function req(version, connection)
      return { version = version, headers = { connection = connection } }
    end
    assert.is_true(http1.keep_alive(req("1.1")))
    assert.is_false(http1.keep_alive(req("1.1", "Close")))
    assert.is_false(http1.keep_alive(req("1.0")))
    assert.is_true(http1.keep_alive(req("1.0", "Keep-Alive")))
  end)

  describe("response_head", function()
    local req11 = { version = "1.1", headers = {} }

    it("sets Content-Length, Date and Connection itself, whatever the handler said", function()
      local head, keep = http1.response_head(req11, 200,
        { ["Content-Type"] = "text/plain", ["content-length"] = "999", Date = "yesterday" }, 5, true)
      assert.is_true(keep)
      local line, fields = head_fields(head)
      assert.are.equal("HTTP/1.1 200 OK", line)
      assert.are.equal("5", fields["content-length"])
      assert.are.equal("text/plain", fields["content-type"])
      assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", fields.date)
      assert.is_nil(fields.connection)
    end)

    it("closes when asked to, by the server or by the handler's own Connection field", function()
      local head, keep = http1.response_head(nil, 400, nil, 0, false)
      assert.is_false(keep)
      assert.are.equal("close", select(2, head_fields(head)).connection)
      head, keep = http1.response_head(req11, 200, { Connection = "close" }, 0, true)
      assert.is_false(keep)
      assert.are.equal("close", select(2, head_fields(head)).connection)
    end)

    it("tells an HTTP/1.0 client that the connection stays, and gives no length without a body", function()
      local _, fields = head_fields((http1.response_head({ version = "1.0", headers = {} }, 200, nil, 2, true)))
      assert.are.equal("keep-alive", fields.connection)
      for _, status in ipairs{ 100, 204, 304 } do
        _, fields = head_fields((http1.response_head(req11, status, nil, 7, true)))
        assert.is_nil(fields["content-length"], tostring(status))
      end
      assert.matches("^HTTP/1.1 299 Unknown\r\n", (http1.response_head(req11, 299, nil, 0, true)))
    end)
  end)

  it("answers Expect: 100-continue for a body not sent yet, and refuses other expectations", function()
    local function req(version, expect) return { version = version, headers = { expect = expect } } end
    assert.is_false(http1.expects_continue(req("1.1"), 10))
    assert.is_true(http1.expects_continue(req("1.1", "100-Continue"), 10))
    assert.is_true(http1.expects_continue(req("1.1", "100-continue"), "chunked"))
    assert.is_false(http1.expects_continue(req("1.1", "100-continue"), 0))
    assert.is_false(http1.expects_continue(req("1.0", "100-continue"), 10))
    local ok, problem = http1.expects_continue(req("1.1", "something-else"), 10)
    assert.is_nil(ok)
    assert.are.equal(417, problem.status)
  end)

  it("writes a URL, an IPv6 host in brackets", function()
    assert.are.equal("http://127.0.0.1:80", http1.url("http", "127.0.0.1", 80))
    assert.are.equal("https://[::1]:8443", http1.url("https", "::1", 8443))
  end)
end)
