local validate = require "dh3.validate"
local contract = require "dh3.contract"
local lua = require "helpers.lua"

describe("dh3.validate", function()
  describe("task_input()", function()
    local long = ("é"):rep(20000)
    local rows = {
      { "a plain prompt", { prompt = "a lighthouse" }, nil },
      { "every option", { prompt = "abc", aspect_ratio = "21:9", resolution = "4K", output_format = "jpg",
          image_urls = { "https://example.com/a.png" }, callback_url = "http://127.0.0.1:9/cb" }, nil },
      { "20000 two-byte characters", { prompt = long }, nil },
      { "a missing prompt", {}, "prompt is required" },
      { "2 characters", { prompt = "hi" }, "prompt must be 3 to 20000 characters, got 2" },
      { "3 characters of 2 bytes each", { prompt = "ééé" }, nil },
      { "20001 characters", { prompt = long .. "x" }, "prompt must be 3 to 20000 characters, got 20001" },
      { "invalid UTF-8", { prompt = "abc\255" }, "prompt is not valid UTF-8" },
      { "9 image URLs", { prompt = "abc", image_urls = { "http://a/1", "http://a/2", "http://a/3", "http://a/4",
          "http://a/5", "http://a/6", "http://a/7", "http://a/8", "http://a/9" } },
        "image_urls at most 8 reference images, got 9" },
      { "an ftp image URL", { prompt = "abc", image_urls = { "ftp://a/1" } }, "image_urls item 1 is not an http(s) URL" },
      { "an unknown ratio", { prompt = "abc", aspect_ratio = "1:2" }, "aspect_ratio must be one of" },
      { "a lower-case resolution", { prompt = "abc", resolution = "1k" }, "resolution must be one of" },
      { "a webp format", { prompt = "abc", output_format = "webp" }, "output_format must be one of" },
      { "a callback URL without scheme", { prompt = "abc", callback_url = "example.com/cb" },
        "callback_url must be an http(s) URL" },
    }
    for _, row in ipairs(rows) do
      it((row[3] and "refuses " or "accepts ") .. row[1], function()
        local body, err = validate.task_input(row[2], 1)
        if row[3] then
          assert.is_nil(body)
          assert.are.equal("invalid_request", err.kind)
          assert.is_truthy(err.message:find(row[3], 1, true), err.message)
        else
          assert.is_nil(err)
          assert.are.equal(contract.MODEL, body.model)
          assert.are.equal(row[2].prompt, body.nano_banana_pro_input.prompt)
          assert.are.equal(row[2].callback_url, body.callback_url)
        end
      end)
    end

    it("leaves an empty image_urls out, so it is never encoded as {}", function()
      local body = validate.task_input({ prompt = "abc", image_urls = {} }, 1)
      assert.is_nil(body.nano_banana_pro_input.image_urls)
    end)

    it("raises on a misspelt key, naming it and the likely one", function()
      assert.has_error(function() validate.task_input({ prompt = "abc", aspect = "16:9" }, 1) end,
        "task: unknown field 'aspect' (did you mean 'aspect_ratio'?)")
    end)

    it("raises on a wrong type", function()
      assert.has_error(function() validate.task_input({ prompt = 42 }, 1) end,
        "task: field 'prompt' must be a string, got number")
      assert.has_error(function() validate.task_input({ prompt = "abc", image_urls = { 1 } }, 1) end,
        "task: field 'image_urls' must be an array of strings")
    end)
  end)

  describe("task_id()", function()
    it("accepts ids and refuses what does not belong in a URL", function()
      assert.is_true(validate.task_id("76808142f56692acea353e2d1dc90e9e"))
      assert.is_false(validate.task_id(""))
      assert.is_false(validate.task_id("a&b=c"))
      assert.is_false(validate.task_id("a b"))
      assert.is_false(validate.task_id(("a"):rep(129)))
      assert.is_false(validate.task_id(12))
    end)
  end)
end)

describe("dh3.download", function()
  local download = require "dh3.download"
  describe("safe_name()", function()
    local rows = {
      { "result.png", "result.png" },
      { "../../etc/passwd", "passwd" },
      { "/etc/passwd", "passwd" },
      { "a\\b\\c.png", "c.png" },
      { "a\0.png", "a" },
      { "bad\nname\r.png", "bad_name_.png" },
      { "..", "fallback.png" },
      { "", "fallback.png" },
      { ".hidden.png", "hidden.png" },
      { "CON", "fallback.png" },
      { "con.png", "fallback.png" },
      { "x:y|z?.png", "x_y_z_.png" },
      { ("a"):rep(300) .. ".png", ("a"):rep(116) .. ".png" },
      { 42, "fallback.png" },
    }
    for _, row in ipairs(rows) do
      it(("%q becomes %q"):format(tostring(row[1]), row[2]), function()
        assert.are.equal(row[2], download.safe_name(row[1], "fallback.png"))
      end)
    end
  end)

  describe("plan()", function()
    it("puts images in a folder under safe names, and numbers them after a file path", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(lua.execute("mkdir " .. dir))
      local images = { { file_name = "../x.png", content_type = "image/png" },
                       { file_name = "x.png", content_type = "image/png" } }
      assert.are.same({ dir .. "/x.png", dir .. "/t1-2.png" }, download.plan("t1", images, dir))
      assert.are.same({ dir .. "/x.png", dir .. "/t1-2.png" }, download.plan("t1", images, dir .. "/"))
      assert.are.same({ "/tmp/out.png", "/tmp/out-2.png" }, download.plan("t1", images, "/tmp/out.png"))
      os.remove(dir)
    end)
  end)
end)
