-- Writes the seed corpora fuzz/corpus/{json,webhook,response}/ (run from the tree's root:
-- `lua5.4 fuzz/seeds.lua`). The seeds are in git; this script says where each came from and
-- remakes them. Inputs libFuzzer adds with `make fuzz FUZZ_MERGE=1` are named by their SHA-1.
local ID = "76808142f56692acea353e2d1dc90e9e"
local IMAGE = '{"url":"https://files.example/result.png","content_type":"image/png","file_name":"result.png",'
  .. '"file_size":"2456789","width":"1024","height":"1024"}'

local function output(fields) return '{"code":200,"message":"Ok","nano_banana_pro_output":{' .. fields .. '}}' end
local function image(fields) return '{"url":"https://files.example/r.png",' .. fields .. '}' end

-- The documented answers and callbacks (shared/api/dh3-api.md), then the ways they go wrong.
local answers = {
  create = '{"code":200,"message":"ok","task_id":"' .. ID .. '"}',
  get_success = output('"task_id":"' .. ID .. '","status":"success","images":[' .. IMAGE .. ']'),
  get_fail = output('"task_id":"' .. ID .. '","status":"fail","err_msg":"Upstream model error"'),
  get_queuing = output('"task_id":"' .. ID .. '","status":"queuing"'),
  get_processing = output('"task_id":"' .. ID .. '","status":"processing"'),
  error_401 = '{"code":401,"message":"invalid API key"}',
  error_402 = '{"code":402,"message":"insufficient credits"}',
  error_429 = '{"code":429,"message":"rate limited"}',
  error_in_200 = '{"code":500,"message":"internal error: the task was not created"}',
  code_float = '{"code":200.5,"message":"ok","task_id":"x"}',
  code_string = '{"code":"200","message":"ok"}',
}

local json = {
  malformed_open = '{"code":200,',
  malformed_colon = '{"code" 200}',
  trailing_garbage = '{"code":200} x',
  empty = '',
  spaces = ' \t\r\n ',
  bom = '\239\187\191{"a":1}',
  top_null = 'null',
  top_string = '"hello"',
  top_number = '42',
  top_float = '4.5',
  deep_64 = ('['):rep(64) .. (']'):rep(64),
  deep_65 = ('['):rep(65) .. (']'):rep(65),
  deep_objects = ('{"a":'):rep(63) .. '1' .. ('}'):rep(63),
  deep_unclosed = ('['):rep(3000),
  huge_numbers = '[1e999,-1e999,1e308,1.7976931348623157e308,1.79769313486232e308,5e-324,1e-400,-0,-0.0]',
  big_integers = '[9007199254740992,9007199254740993,-9007199254740993,18446744073709551616,'
    .. '9223372036854775807,-9223372036854775808,123456789012345678901234567890]',
  long_digits = '[' .. ('9'):rep(400) .. ']',
  invalid_numbers = '[NaN,Infinity,-Infinity,0x10,+1,.5,1.,01]',
  nul_raw = '{"a":1}\0{"b":2}',
  nul_in_string = '{"a":"x\0y"}',
  nul_escaped = '{"file_name":"a\\u0000.png"}',
  unicode = '{"s":"\\u00e9\\u4e2d\\ud83d\\ude00\\/\\"\\\\\\b\\f\\n\\r\\t"}',
  lone_surrogates = '["\\ud800","\\udc00","\\ud800x","\\uDBFF\\uDFFF"]',
  bad_escapes = '["\\x41","\\u12","\\u12G4","\\"]',
  raw_bytes = '{"s":"\255\254\192\128 \1\31"}',
  duplicate_keys = '{"code":200,"code":500,"code":null}',
  null_holes = '[null,1,null,2,null]',
  sparse = '[1' .. (',null'):rep(40) .. ',2]',
  empty_containers = '{"a":[],"b":{},"c":[[]],"d":[{}]}',
  long_string = '{"s":"' .. ('x'):rep(10000) .. '"}',
  many_keys = '{' .. table.concat((function() local t = {} for i = 1, 300 do t[i] = ('"k%d":%d'):format(i, i) end return t end)(), ',') .. '}',
}
for k, v in pairs(answers) do json["answer_" .. k] = v end

local webhook = {
  success = answers.get_success,
  fail = answers.get_fail,
  queuing = answers.get_queuing,
  sizes_as_numbers = output('"task_id":"t1","status":"success","images":[' .. image('"file_size":2456789,"width":1024,"height":1024') .. ']'),
  sizes_negative = output('"task_id":"t1","status":"success","images":[' .. image('"file_size":-1,"width":-1024,"height":1024') .. ']'),
  sizes_float = output('"task_id":"t1","status":"success","images":[' .. image('"file_size":1.5,"width":1e3,"height":1024.0') .. ']'),
  sizes_huge = output('"task_id":"t1","status":"success","images":[' .. image('"file_size":"999999999999999999999","width":"1","height":"1"') .. ']'),
  sizes_2p53 = output('"task_id":"t1","status":"success","images":[' .. image('"file_size":9007199254740992,"width":"1","height":"1"') .. ']'),
  sizes_signs = output('"task_id":"t1","status":"success","images":[' .. image('"file_size":"+1","width":" 1","height":"0x10"') .. ']'),
  path_names = output('"task_id":"t1","status":"success","images":['
    .. image('"file_size":"1","width":"1","height":"1","file_name":"../../etc/passwd"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"/abs/x.png"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"CON.png"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"a\\u0000b.png"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"..\\\\..\\\\x"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":" .hidden. "') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"\\n\\u001b[31m"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"' .. ('x'):rep(300) .. '.png"') .. ']'),
  same_names = output('"task_id":"t1","status":"success","images":['
    .. image('"file_size":"1","width":"1","height":"1","file_name":"a.png"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"a.png"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"t1-2.png","content_type":"image/png"') .. ']'),
  fallback_taken = output('"task_id":"t1","status":"success","images":['
    .. image('"file_size":"1","width":"1","height":"1","file_name":"t1-2.img"') .. ','
    .. image('"file_size":"1","width":"1","height":"1","file_name":"t1-2.img"') .. ']'),
  too_many_images = output('"task_id":"t1","status":"success","images":[' .. (image('"file_size":"1","width":"1","height":"1"') .. ','):rep(64)
    .. image('"file_size":"1","width":"1","height":"1"') .. ']'),
  image_holes = output('"task_id":"t1","status":"success","images":[null,' .. image('"file_size":"1","width":"1","height":"1"') .. ']'),
  bad_urls = output('"task_id":"t1","status":"success","images":[{"url":"file:///etc/passwd","file_size":"1","width":"1","height":"1"}]'),
  task_id_slash = output('"task_id":"../x","status":"fail"'),
  task_id_number = output('"task_id":12,"status":"fail"'),
  task_id_long = output('"task_id":"' .. ('a'):rep(129) .. '","status":"fail"'),
  status_unknown = output('"task_id":"t1","status":"done"'),
  status_table = output('"task_id":"t1","status":{"a":[1]}'),
  err_msg_table = output('"task_id":"t1","status":"fail","err_msg":{"x":1}'),
  no_output = '{"code":200,"message":"ok"}',
  output_array = '{"code":200,"nano_banana_pro_output":[1,2]}',
  code_float = '{"code":200.5,"nano_banana_pro_output":{"task_id":"t1","status":"fail"}}',
  array = '[1,2,3]',
  malformed = '{"code":200,',
  nul = answers.get_fail .. '\0garbage',
}

-- response: one control byte, then the bytes as they arrive (fuzz/response.c has the framing).
local CRLF = "\r\n"
local function http(status, headers, body)
  return "HTTP/1.1 " .. status .. CRLF .. table.concat(headers, CRLF) .. (#headers > 0 and CRLF or "") .. CRLF .. (body or "")
end
local JSON_CT = "Content-Type: application/json"
local C = string.char
local response = {
  create = C(0) .. http("200 OK", { JSON_CT, "Content-Length: " .. #answers.create }, answers.create),
  get_success = C(0) .. http("200 OK", { JSON_CT }, answers.get_success),
  get_success_h2 = C(0) .. "HTTP/2 200 " .. CRLF .. "content-type: application/json" .. CRLF .. CRLF .. answers.get_success,
  get_fail_bytewise = C(1) .. http("200 OK", { JSON_CT }, answers.get_fail),
  error_401 = C(0) .. http("401 Unauthorized", { JSON_CT }, answers.error_401),
  error_402 = C(0) .. http("402 Payment Required", { JSON_CT }, answers.error_402),
  rate_limited_seconds = C(0) .. http("429 Too Many Requests", { JSON_CT, "Retry-After: 2" }, answers.error_429),
  rate_limited_date = C(0) .. http("429 Too Many Requests", { "Retry-After: Sun, 06 Nov 2094 08:49:37 GMT" }, answers.error_429),
  rate_limited_huge = C(0) .. http("429 Too Many Requests", { "Retry-After: " .. ("9"):rep(400) }, answers.error_429),
  rate_limited_year_9999 = C(0) .. http("429 Too Many Requests", { "Retry-After: Fri, 31 Dec 9999 23:59:59 GMT" }, answers.error_429),
  rate_limited_junk = C(0) .. http("429 Too Many Requests", { "retry-after:\t 1x ", "RETRY-AFTER: -5" }, ""),
  unavailable = C(0) .. http("503 Service Unavailable", { "Content-Type: text/html" }, "<html>busy</html>"),
  error_in_200 = C(0) .. http("200 OK", { JSON_CT }, answers.error_in_200),
  continue_then_ok = C(0) .. "HTTP/1.1 100 Continue" .. CRLF .. CRLF .. http("200 OK", { JSON_CT }, answers.create),
  redirect_then_ok = C(0) .. http("302 Found", { "Location: https://api.dh3.app/x", "Content-Length: 0" })
    .. http("200 OK", { JSON_CT }, answers.create),
  lf_only = C(0) .. "HTTP/1.0 200 OK\nContent-Type: application/json\n\n" .. answers.create,
  no_status_line = C(0) .. "Content-Type: application/json" .. CRLF .. CRLF .. answers.create,
  bad_status = C(0) .. http("2x0 OK", {}, answers.create),
  status_999 = C(0) .. http("999 Odd", {}, answers.create),
  content_length_lies = C(0) .. http("200 OK", { "Content-Length: 99999999999999999999999" }, answers.create),
  malformed_json = C(0) .. http("200 OK", { JSON_CT }, '{"code":200,'),
  nul_in_body = C(0) .. http("200 OK", { JSON_CT }, answers.create .. "\0junk"),
  not_json = C(0) .. http("502 Bad Gateway", {}, "upstream \27[31mfailed\n\r"),
  body_over_max = C(0x08) .. http("200 OK", { JSON_CT }, answers.create), -- max_body 16
  body_chunked_64 = C(0x04 | 0x10) .. http("200 OK", { JSON_CT }, answers.get_success), -- chunks of 64, max 1024
  headers_over_cap = C(0) .. http("200 OK", { "X-Pad: " .. ("p"):rep(16400) }, answers.create),
  header_no_colon = C(0) .. http("200 OK", { "Retry-After", "Content-Type:", "Content-Length:  12 " }, answers.create),
  cut_mid_body = C(0x40) .. http("200 OK", { JSON_CT }, answers.create:sub(1, 20)),
  timed_out = C(0x80) .. http("200 OK", { JSON_CT }, answers.create:sub(1, 20)),
  not_connected = C(0xC0) .. http("200 OK", {}, answers.create),
  image_exact = C(0x20) .. http("200 OK", { "Content-Type: image/png" }, ("i"):rep(64)),
  image_short = C(0x20) .. http("200 OK", { "Content-Type: image/png" }, ("i"):rep(63)),
  image_long = C(0x20 | 0x02) .. http("200 OK", { "Content-Type: image/png" }, ("i"):rep(65)),
  image_404 = C(0x20) .. http("404 Not Found", { "Content-Type: text/plain" }, "expired"),
  image_redirect = C(0x20) .. http("301 Moved", { "Location: /b", "Content-Length: 3" }) .. http("200 OK", {}, ("i"):rep(64)),
}

local function write_all(name, seeds)
  local dir = "fuzz/corpus/" .. name
  assert(os.execute("mkdir -p " .. dir))
  local n = 0
  for seed, bytes in pairs(seeds) do
    local f = assert(io.open(dir .. "/" .. seed, "wb"))
    f:write(bytes)
    f:close()
    n = n + 1
  end
  print(("%s: %d seeds"):format(dir, n))
end

write_all("json", json)
write_all("webhook", webhook)
write_all("response", response)
