---@meta dh3
-- LuaLS (lua-language-server) definitions of dh3's public API: completion, hover and type checks
-- for `client:`, `task.` and the rest. Never loaded at run time. Point LuaLS at this folder
-- (README.md, "Editor support"): in .luarc.json, "workspace.library": ["/path/to/dh3/library"].
-- spec/annotations_spec.lua compares every class here with what the modules really export.

---The kinds of dh3's errors (`err.kind`).
---@alias dh3.ErrorKind
---| "invalid_request" # refused locally before any request, or HTTP 400/422
---| "auth" # no API key, or 401/403
---| "insufficient_credits" # 402
---| "not_found" # 404: unknown task, or an expired image URL
---| "rate_limited" # 429 after retries
---| "server" # 5xx after retries
---| "network" # DNS, connect, TLS, reset
---| "timeout" # a request or a wait ran out of time
---| "protocol" # an answer that breaks the contract (not JSON, missing fields, wrong size)
---| "task_failed" # the task ended in "fail"; `message` is the service's err_msg
---| "cancelled" # stopped by task:cancel() or client:close(); the task id is still valid
---| "journal" # the journal cannot be opened or written
---| "io" # a local file could not be written: a download's folder, a full disk

---The states of a task (`task.state`).
---@alias dh3.TaskState
---| "new" # made from an input table, not created yet
---| "unknown" # attached to an id, not read yet
---| "queuing"
---| "processing"
---| "success"
---| "fail"

---Every failure dh3 returns: `nil, err`. `tostring(err)` is one line.
---@class dh3.Error
---@field kind dh3.ErrorKind
---@field message string
---@field http_status? integer the HTTP status, when an answer came
---@field code? integer the API's body code (the service may fail with HTTP 200 and a code)
---@field task_id? string
---@field retryable? boolean whether dh3 considered the failure worth retrying
---@field retry_after? number seconds the service asked to wait (Retry-After)
---@field curl_error? string libcurl's error name, e.g. "COULDNT_CONNECT"
---@field maybe_created? boolean a create whose answer was lost: the task may exist (and be charged)
---@field paths? string[] on a failed download: the files saved complete before the failure
local Error = {}

---One image of a successful task.
---@class dh3.Image
---@field url string a temporary URL on the service's image host
---@field content_type string "image/png" or "image/jpeg"
---@field file_name string as the service names it (made safe when saved)
---@field file_size integer bytes
---@field width integer
---@field height integer
local Image = {}

---The input of a task (`client:task(input)`, `client:create(input)`).
---@class dh3.TaskInput
---@field prompt string 3 to 20000 characters of UTF-8
---@field aspect_ratio? "1:1"|"2:3"|"3:2"|"3:4"|"4:3"|"4:5"|"5:4"|"9:16"|"16:9"|"21:9"|"auto"
---@field resolution? "1K"|"2K"|"4K"
---@field output_format? "png"|"jpg"
---@field image_urls? string[] up to 8 http(s) URLs of reference images
---@field callback_url? string http(s) URL the service POSTs the result to

---The options of `dh3.new`; every field is optional.
---@class dh3.Options
---@field api_key? string default: os.getenv("DH3_API_KEY")
---@field base_url? string default: os.getenv("DH3_BASE_URL") or "https://api.dh3.app"
---@field timeout? number seconds per HTTP request (60)
---@field connect_timeout? number seconds (10)
---@field max_retries? integer extra attempts for retryable failures (3)
---@field retry_delay? number first back-off step in seconds (0.5)
---@field create_qps? number|false client-side pacing of creates (3); false turns it off
---@field ca_file? string
---@field proxy? string
---@field user_agent? string
---@field on_request? fun(info: dh3.RequestInfo) after each API exchange (not downloads)
---@field journal? string a file path: every create recorded durably
---@field loop? "host" drive the client from your own event loop (see client:watched, client:socket_action)

---What `on_request` receives after each API exchange (creates and status reads; downloads
---are not reported). Never the key.
---@class dh3.RequestInfo
---@field method "GET"|"POST"
---@field path string the API path, without the query
---@field status integer the HTTP status (0 when no answer came)
---@field attempt integer 1 for the first try
---@field seconds number
---@field error? dh3.ErrorKind when the exchange failed
---@field task_id? string the task read, or the task a successful create made

---@class dh3.WaitOptions
---@field timeout? number seconds in all (600)
---@field interval? number first poll interval in seconds (1)
---@field max_interval? number the interval grows up to this (10)
---@field on_update? fun(task: dh3.Task) on every change of state

---@class dh3.WatchOptions: dh3.WaitOptions
---@field max_concurrency? integer requests in flight at most (16)
---@field on_done? fun(task: dh3.Task, err: dh3.Error?) when a task ends

---@class dh3.DownloadOptions
---@field timeout? number seconds for each image
---@field progress? fun(task: dh3.Task, bytes: integer, total: integer) as bytes arrive (all images together)

---@class dh3.ListenOptions
---@field host? string "127.0.0.1"
---@field port? integer 0: a free one
---@field path? string "/dh3/callback", before the secret segment
---@field secret? boolean|string true (random), a string (kept across restarts), false (none)
---@field public_url? string the base the service must call, when it differs
---@field attach? boolean put the receiver's URL into creates without a callback_url (true)
---@field max_body? integer bytes (64 KiB)
---@field max_connections? integer 1 to 250 (64)
---@field idle_timeout? number seconds to send each request (10)
---@field store? dh3.Store the de-duplicator's store

---Anything that remembers keys: `add(key)` is true the first time only.
---@class dh3.Store
local Store = {}

---@param key string
---@return boolean new
function Store:add(key) end

---A create whose answer never came back (journal): possibly created, id unknown.
---@class dh3.Unanswered
---@field local_id string
---@field input dh3.TaskInput
---@field at number Unix seconds of the create

---A client: one engine, one key. Close it (or use `<close>`) when done.
---@class dh3.Client
---@field base_url string the service's URL (a password in it shown as ***)
---@field timeout number
---@field connect_timeout number
---@field max_retries integer
---@field retry_delay number
---@field on_request? fun(info: dh3.RequestInfo)
local Client = {}

---A task from an input table (created later with `task:create()`), or attached to an existing
---task id (no request is made).
---@param input dh3.TaskInput|string
---@return dh3.Task
function Client:task(input) end

---`client:task(input)` and `task:create()` in one call.
---@param input dh3.TaskInput
---@return dh3.Task? task
---@return dh3.Error? err
function Client:create(input) end

---Waits for every task. `errs[i]` is the error of `tasks[i]` when it did not succeed.
---@param tasks dh3.Task[]
---@param opts? dh3.WatchOptions
---@return dh3.Task[] tasks
---@return table<integer, dh3.Error> errs
function Client:wait_all(tasks, opts) end

---An iterator over `task, err` in the order the tasks end.
---@param tasks dh3.Task[]
---@param opts? dh3.WatchOptions
---@return fun(): dh3.Task?, dh3.Error?
function Client:as_completed(tasks, opts) end

---The first task to end (and its error); polling of the others stops. nil when `tasks` is empty.
---@param tasks dh3.Task[]
---@param opts? dh3.WatchOptions
---@return dh3.Task? task
---@return dh3.Error? err
function Client:wait_any(tasks, opts) end

---Starts polling in the background and returns at once; the callbacks fire from
---`update()`, `run()` or any blocking dh3 call.
---@param tasks dh3.Task[]
---@param opts? dh3.WatchOptions
---@return dh3.Group
function Client:watch(tasks, opts) end

---Runs `fn(...)` in a coroutine in which every dh3 call yields instead of blocking.
---@param fn fun(...)
---@param ... any
---@return thread
function Client:spawn(fn, ...) end

---Waits `seconds` (yields in a spawned coroutine, else blocks while everything keeps moving).
---@param seconds number
function Client:sleep(seconds) end

---Advances every transfer, timer and coroutine without waiting: call it once per frame.
---@return integer pending the number of things still pending
function Client:update() end

---Blocks until nothing is pending.
function Client:run() end

---Your own event loop: switches the engine to libcurl's socket-action mode (nothing may be in
---flight; `dh3.new{loop = "host"}` starts in it). update(), run() and blocking calls keep working.
function Client:use_host_loop() end

---The descriptors whose wanted events changed since the last call (every watched one with `all`),
---into `t`: t[1], t[2] = fd, events ("r", "w", "rw", or "" to stop watching) ... Allocates nothing
---when nothing changed.
---@param t table
---@param all? boolean
---@return integer n the number of descriptors written
function Client:watched(t, all) end

---Seconds until the client must be called with `socket_action()` (no descriptor); nil when
---nothing is due.
---@return number?
function Client:next_timeout() end

---Acts on a ready descriptor (`events`: "r", "w", "rw" or "e"), or on the timer with no
---arguments; then runs completions, coroutines and timers as `update()` does.
---@param fd? integer
---@param events? string
---@return integer pending
function Client:socket_action(fd, events) end

---True once the client is closed.
---@return boolean
function Client:is_closed() end

---Where errors raised by spawned coroutines and by your callbacks go (default: stderr).
---@param handler fun(err: any, co: thread?, traceback: string?)
function Client:on_error(handler) end

---Serves a webhook receiver on this client's engine.
---@param opts? dh3.ListenOptions
---@return dh3.Listener? listener
---@return dh3.Error? err
function Client:listen(opts) end

---With a journal: the tasks created but not seen to finish, and the creates never answered.
---@return dh3.Task[] tasks
---@return dh3.Unanswered[] unanswered
function Client:pending() end

---Lets creates already sent finish, cancels everything else, frees the engine. Idempotent.
function Client:close() end

---One generation task.
---@class dh3.Task
---@field client dh3.Client
---@field id? string set by create()
---@field state dh3.TaskState
---@field images? dh3.Image[] on success
---@field error? string on fail: the service's err_msg
local Task = {}

---Submits the task and sets `task.id`. Creating the same task twice raises.
---@return dh3.Task? task
---@return dh3.Error? err
function Task:create() end

---One status read: updates the fields.
---@return dh3.TaskState? state
---@return dh3.Error? err
function Task:status() end

---True in "success" or "fail".
---@return boolean
function Task:done() end

---Polls until the task ends: the task on success; nil, err ("task_failed", "timeout", ...).
---@param opts? dh3.WaitOptions
---@return dh3.Task? task
---@return dh3.Error? err
function Task:wait(opts) end

---Saves the images: `dest` is a folder (existing, or ending in "/": then made, with its
---parents) or a file path (its folder must exist).
---@param dest string
---@param opts? dh3.DownloadOptions
---@return string[]? paths
---@return dh3.Error? err
function Task:download(dest, opts) end

---The bytes of image `i` (default 1), in memory.
---@param i? integer
---@param opts? dh3.DownloadOptions
---@return string? bytes
---@return dh3.Error? err
function Task:read(i, opts) end

---Stops this task's waits, polls and downloads in progress (kind "cancelled"); the task itself goes on.
function Task:cancel() end

---What `client:watch` returns.
---@class dh3.Group
local Group = {}

---Waits until every task has ended, or the group is stopped.
---@return dh3.Task[] tasks
---@return table<integer, dh3.Error> errs `errs[i]`: the error of `tasks[i]` when it did not succeed
function Group:wait() end

---The next task to end: `task, err`; nil once every task has been returned (or after stop()).
---@return dh3.Task? task
---@return dh3.Error? err
function Group:next() end

---Stops watching: polls in flight are cancelled (the tasks themselves go on).
function Group:stop() end

---@return integer remaining the tasks still being watched
function Group:pending() end

---What `client:listen` returns.
---@class dh3.Listener
---@field url string the URL the service must call (with its secret segment)
---@field counts {received: integer, accepted: integer, duplicates: integer, refused: integer, not_found: integer, early: integer}
local Listener = {}

---@return integer
function Listener:port() end

---@return integer open the connections open now
function Listener:connections() end

---Stops listening. Idempotent.
function Listener:close() end

---@private
---@param task_id string
function Listener:claim(task_id) end

---@private
function Listener:wait_set() end

---@private
function Listener:step() end

---`dedup:first(task_id)` is true the first time only.
---@class dh3.Deduplicator
---@field store dh3.Store
local Deduplicator = {}

---@param task_id string
---@return boolean
function Deduplicator:first(task_id) end

---A callback's content.
---@class dh3.WebhookResult
---@field task_id string
---@field state dh3.TaskState
---@field images? dh3.Image[]
---@field error? string

---For programs with a web server of their own.
---@class dh3.webhook
local webhook = {}

---A callback body -> its content, or nil, err (kind "protocol").
---@param body string
---@return dh3.WebhookResult? result
---@return dh3.Error? err
function webhook.parse(body) end

---@param store? dh3.Store default: in memory
---@return dh3.Deduplicator
function webhook.deduplicator(store) end

---The module: `local dh3 = require "dh3"`.
---@class dh3
---@field VERSION string e.g. "0.1.0"
---@field webhook dh3.webhook
local dh3 = {}

---A new client, or nil, err (kind "auth" without a key). A wrong option raises.
---@param opts? dh3.Options
---@return dh3.Client? client
---@return dh3.Error? err
function dh3.new(opts) end

---True when `v` is an error returned by dh3.
---@param v any
---@return boolean
function dh3.is_error(v) end

---Seconds on a monotonic clock (dh3's own, for its deadlines); only differences mean anything.
---@return number
function dh3.now() end

return dh3
