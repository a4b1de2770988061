local errors = require "dh3.errors"
local retry = require "dh3.retry"

-- A result of the C core as next_done() hands it back, with the fields that matter here.
local function res(t)
  t.curl_code = t.curl_code or 0
  t.status = t.status or 0
  return t
end

describe("dh3.errors", function()
  describe("from_response()", function()
    local rows = {
      { "a 200 answer with code 200", res{ status = 200, body = '{"code":200,"message":"ok","task_id":"ab"}' },
        nil, { code = 200, message = "ok", task_id = "ab" } },
      { "HTTP 401", res{ status = 401, body = '{"code":401,"message":"bad key"}' },
        { kind = "auth", http_status = 401, code = 401, message = "bad key" } },
      { "HTTP 403", res{ status = 403, body = "" }, { kind = "auth", http_status = 403 } },
      { "HTTP 402", res{ status = 402, body = '{"code":402,"message":"no credits"}' },
        { kind = "insufficient_credits", http_status = 402, code = 402 } },
      { "HTTP 404", res{ status = 404, body = '{"code":404,"message":"task not found"}' },
        { kind = "not_found", http_status = 404 } },
      { "HTTP 422", res{ status = 422, body = '{"code":422,"message":"prompt: too short"}' },
        { kind = "invalid_request", http_status = 422, message = "prompt: too short" } },
      { "HTTP 400 without a body", res{ status = 400 }, { kind = "invalid_request", http_status = 400 } },
      { "a redirect", res{ status = 302, body = "moved" }, { kind = "protocol", http_status = 302 } },
      { "HTTP 429 with Retry-After", res{ status = 429, body = '{"code":429,"message":"slow down"}',
          retry_after = "2" }, { kind = "rate_limited", http_status = 429, retry_after = 2 } },
      { "HTTP 503 with an HTML body", res{ status = 503, body = "<html>busy</html>" },
        { kind = "server", http_status = 503, message = "HTTP 503" } },
      { "code 402 in an HTTP 200 body", res{ status = 200, body = '{"code":402,"message":"no credits"}' },
        { kind = "insufficient_credits", http_status = 200, code = 402 } },
      { "code 429 in an HTTP 200 body", res{ status = 200, body = '{"code":429,"message":"slow"}' },
        { kind = "rate_limited", http_status = 200, code = 429 } },
      { "code 500 in an HTTP 200 body", res{ status = 200, body = '{"code":500,"message":"oops"}' },
        { kind = "server", code = 500 } },
      { "a body that is not JSON", res{ status = 200, body = '{"code":200,' }, { kind = "protocol", http_status = 200 } },
      { "a JSON array", res{ status = 200, body = "[1,2]" }, { kind = "protocol" } },
      { "no code", res{ status = 200, body = '{"message":"ok"}' }, { kind = "protocol" } },
      { "a string code", res{ status = 200, body = '{"code":"200"}' }, { kind = "protocol" } },
      { "connection refused", res{ curl_code = 7, curl_error = "COULDNT_CONNECT", message = "refused" },
        { kind = "network", curl_error = "COULDNT_CONNECT" } },
      { "a timeout", res{ curl_code = 28, curl_error = "OPERATION_TIMEDOUT", message = "timed out" },
        { kind = "timeout", curl_error = "OPERATION_TIMEDOUT" } },
      { "a body over the cap", res{ curl_code = 23, curl_error = "WRITE_ERROR", too_large = true, status = 200 },
        { kind = "protocol" } },
    }
    for _, row in ipairs(rows) do
      local name, input, want_err, want_doc = row[1], row[2], row[3], row[4]
      it("classifies " .. name, function()
        local doc, err = errors.from_response(input)
        if want_err then
          assert.is_nil(doc)
          for k, v in pairs(want_err) do assert.are.same(v, err[k], k) end
        else
          assert.is_nil(err)
          assert.are.same(want_doc, doc)
        end
      end)
    end

    it("keeps a server's message on one line in tostring()", function()
      local _, err = errors.from_response(res{ status = 500, body = '{"code":500,"message":"line one\\nline two"}' })
      local s = tostring(err)
      assert.is_nil(s:find("\n"))
      assert.matches("^dh3: server: line one line two %(HTTP 500%)$", s)
    end)
  end)

  describe("parse_retry_after()", function()
    it("reads delta-seconds and HTTP dates", function()
      assert.are.equal(3, errors.parse_retry_after("3"))
      assert.is_nil(errors.parse_retry_after("soon"))
      local future = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 30)
      local s = errors.parse_retry_after(future)
      assert.is_true(s >= 28 and s <= 31, tostring(s))
    end)
  end)
end)

describe("dh3.retry", function()
  describe("create_retryable()", function()
    local rows = {
      { "429", { kind = "rate_limited", http_status = 429 }, res{ status = 429 }, true, false },
      { "503", { kind = "server", http_status = 503 }, res{ status = 503 }, true, false },
      { "code 503 in a 200 body", { kind = "server", http_status = 200, code = 503 }, res{ status = 200 }, true, false },
      { "500", { kind = "server", http_status = 500 }, res{ status = 500 }, false, true },
      { "connection refused", { kind = "network" }, res{ curl_code = 7, curl_error = "COULDNT_CONNECT" }, true, false },
      { "a reset after sending", { kind = "network" },
        res{ curl_code = 56, curl_error = "RECV_ERROR", request_size = 300 }, false, true },
      { "a connect timeout", { kind = "timeout" },
        res{ curl_code = 28, curl_error = "OPERATION_TIMEDOUT", request_size = 0 }, true, false },
      { "a timeout waiting for the answer", { kind = "timeout" },
        res{ curl_code = 28, curl_error = "OPERATION_TIMEDOUT", request_size = 300 }, false, true },
      { "a malformed answer", { kind = "protocol" }, res{ status = 200 }, false, true },
      { "a refusal", { kind = "invalid_request", http_status = 422 }, res{ status = 422 }, false, false },
      { "no credits", { kind = "insufficient_credits", http_status = 402 }, res{ status = 402 }, false, false },
      { "a redirect", { kind = "protocol", http_status = 302 }, res{ status = 302 }, false, false },
    }
    for _, row in ipairs(rows) do
      it(("%s: retry %s, maybe created %s"):format(row[1], tostring(row[4]), tostring(row[5])), function()
        local again, maybe = retry.create_retryable(row[2], row[3])
        assert.are.equal(row[4], again)
        assert.are.equal(row[5], maybe)
      end)
    end
  end)

  describe("backoff()", function()
    it("grows exponentially with jitter and honours Retry-After", function()
      for attempt = 1, 5 do
        local step = 0.5 * 2 ^ (attempt - 1)
        for _ = 1, 20 do
          local d = retry.backoff(attempt, 0.5)
          assert.is_true(d >= step / 2 and d <= step, ("attempt %d: %g"):format(attempt, d))
        end
      end
      assert.are.equal(7, retry.backoff(1, 0.5, 7))
      assert.is_nil(retry.backoff(1, 0.5, retry.MAX_RETRY_AFTER + 1)) -- the caller gets the error instead
      assert.is_true(retry.backoff(30, 0.5) <= 30)
    end)
  end)
end)
