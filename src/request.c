/*
** request.c: one HTTP transfer, built and finished. What a request is while in flight (its
** state, its place in the engine's lists, its anchor) is engine.c's: nothing here reads or
** writes req->flight, and nothing here calls the engine.
**
** Building: options are validated before anything is allocated; the userdata is then made
** first, so from that point every C resource (easy handle, header list, temp file, buffers)
** is owned by it and freed by its one close, whatever error follows. Every libcurl option
** a request sets is in one table, DH3_REQUEST_OPTIONS, applied whole to every request.
**
** The libcurl callbacks run inside curl_multi_perform and touch C state only: they
** append to the memory buffer or write to the temp file, count bytes, and keep the few
** response headers the Lua layer needs. No Lua runs in them (no lua_State is even
** reachable from them), so no error can longjmp through libcurl.
**
** Body routing: a 2xx response of a download goes to the temp file; anything else (an
** API call, or a download's error answer) goes to the memory buffer, capped at max_body,
** so the error text is available and the destination is never touched by it.
**
** Placing a download: the finished temp file gets the destination's name only where no file
** is: renameat2(RENAME_NOREPLACE) where the system has it, else link() then unlink() of the
** temp name. Both fail with EEXIST instead of replacing, atomically, so a file that appears
** at the destination at any moment (the user's, a symbolic link, another download's) is never
** replaced nor written through; the download then takes the next free name, "stem-2.ext",
** "stem-3.ext", ..., and the result's path says which.
**
** A create goes out once: see DH3_REQUEST_OPTIONS.
*/
/* renameat2 and RENAME_NOREPLACE (glibc >= 2.28) are GNU extensions */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "dh3.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__GLIBC__) && defined(RENAME_NOREPLACE) && defined(AT_FDCWD)
#define DH3_HAVE_RENAMEAT2 1
#endif

enum { DH3_METHOD_GET = 0, DH3_METHOD_POST, DH3_METHOD_HEAD };
static const char *const dh3_request_method_names[] = {"GET", "POST", "HEAD", NULL};

static const char *const dh3_request_fields[] = {
  "method", "url", "headers", "body", "timeout", "connect_timeout", "follow_redirects",
  "download_to", "expect_size", "max_body", "context", NULL
};

#define DH3_MAX_HEADERS 100 /* request headers a caller may add */
#define DH3_TEMP_SUFFIX ".part-XXXXXX"
#define DH3_MAX_FREE_NAME 1000 /* "stem-2.ext" .. "stem-1000.ext": then the download fails */

/* Like mkstemp, but the file gets the mode an ordinary new file would (0666 less the umask):
   mkstemp's 0600 would leave every downloaded image readable by its owner only, and reading
   the umask to fix that afterwards is not safe in a threaded host. */
static int dh3_request_mktemp(char *path) {
  static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  char *x = path + strlen(path) - 6;
  struct timespec ts;
  unsigned long seed;
  int attempt, i, fd;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  seed = (unsigned long)ts.tv_nsec ^ ((unsigned long)ts.tv_sec << 20) ^ (unsigned long)getpid() ^
         (unsigned long)(uintptr_t)path; /* path: a live allocation, so unique among transfers */
  for (attempt = 0; attempt < 100; attempt++) {
    for (i = 0; i < 6; i++) {
      seed = seed * 6364136223846793005UL + 1442695040888963407UL;
      x[i] = chars[(seed >> 33) % (sizeof(chars) - 1)];
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  return -1;
}
#define DH3_MAX_SECONDS 2000000.0 /* ~23 days: milliseconds still fit a 32-bit long */
#define DH3_BODY_MIN_CAP ((size_t)16 * 1024)

#define DH3_IS_2XX(s) ((s) >= 200 && (s) <= 299)

/* {======================================================================
** Options
** ======================================================================= */
typedef struct {
  int method;
  const char *url;
  const char *body;
  size_t body_len;
  long timeout_ms, connect_timeout_ms; /* 0: not given */
  int follow_redirects;
  const char *download_to;
  curl_off_t expect_size;
  size_t max_body;
  int user_expect; /* the caller sent an Expect header of its own */
  int user_agent;  /* ... and a User-Agent */
  int n_headers;
  int given;       /* how many of the known fields are set */
} dh3_request_opts;

static int dh3_request_bad(lua_State *L, const char *fmt, ...) {
  const char *msg;
  va_list ap;
  va_start(ap, fmt);
  msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return luaL_argerror(L, 2, msg);
}

/* Pushes opts[name] (raw: no metamethod runs) and returns its type. */
static int dh3_request_field(lua_State *L, const char *name) {
  lua_pushstring(L, name);
  lua_rawget(L, 2);
  return lua_type(L, -1);
}

/* The same, counting a field that is set in o->given. */
static int dh3_request_known(lua_State *L, dh3_request_opts *o, const char *name) {
  int t = dh3_request_field(L, name);
  if (t != LUA_TNIL) o->given++;
  return t;
}

/* A string field, without NUL bytes (libcurl takes C strings). The pointer stays valid
   after the pop: the options table holds the string and nothing changes it meanwhile. */
static const char *dh3_request_opt_string(lua_State *L, dh3_request_opts *o, const char *name,
                                          size_t *lenp) {
  const char *s;
  size_t len;
  int t = dh3_request_known(L, o, name);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (t != LUA_TSTRING)
    dh3_request_bad(L, "field '%s' must be a string (got %s)", name, luaL_typename(L, -1));
  s = lua_tolstring(L, -1, &len);
  if (lenp != NULL) {
    *lenp = len;
  } else if (strlen(s) != len) {
    dh3_request_bad(L, "field '%s' contains a NUL byte", name);
  }
  lua_pop(L, 1);
  return s;
}

/* Seconds as a number > 0 -> milliseconds, rounded up (0.0001 s must not become 0,
   which libcurl reads as "no timeout"). 0 when not given. */
static long dh3_request_opt_ms(lua_State *L, dh3_request_opts *o, const char *name) {
  lua_Number s;
  double ms;
  long v;
  int t = dh3_request_known(L, o, name);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  s = lua_tonumber(L, -1);
  if (t != LUA_TNUMBER || !(s > 0) || s > DH3_MAX_SECONDS)
    dh3_request_bad(L, "field '%s' must be a number of seconds above 0 (at most %d)", name,
                    (int)DH3_MAX_SECONDS);
  lua_pop(L, 1);
  ms = (double)s * 1000.0;
  v = (long)ms;
  if ((double)v < ms) v++;
  return v;
}

static lua_Integer dh3_request_opt_integer(lua_State *L, dh3_request_opts *o, const char *name,
                                           lua_Integer def, lua_Integer min, lua_Integer max) {
  lua_Integer v;
  int isint = 0;
  int t = dh3_request_known(L, o, name);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  v = lua_tointegerx(L, -1, &isint);
  if (t != LUA_TNUMBER || !isint || v < min || v > max) {
    char lo[DH3_INTEGER_BUFSIZE], hi[DH3_INTEGER_BUFSIZE];
    dh3_request_bad(L, "field '%s' must be an integer from %s to %s", name,
                    dh3_compat_fmtint(lo, min), dh3_compat_fmtint(hi, max));
  }
  lua_pop(L, 1);
  return v;
}

static int dh3_request_prefix_ci(const char *s, size_t len, const char *lower) {
  size_t i, n = strlen(lower);
  if (len < n) return 0;
  for (i = 0; i < n; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (c != lower[i]) return 0;
  }
  return 1;
}

/* The number of keys of the table at idx. */
static int dh3_request_count_keys(lua_State *L, int idx) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/* Validates every option (raising on a caller's mistake) before anything is allocated.
   max_body: the engine's, for a request that does not say. */
static void dh3_request_parse(lua_State *L, size_t max_body, dh3_request_opts *o) {
  const char *s;
  memset(o, 0, sizeof(*o));

  o->method = DH3_METHOD_GET;
  if ((s = dh3_request_opt_string(L, o, "method", NULL)) != NULL) {
    int i;
    o->method = -1;
    for (i = 0; dh3_request_method_names[i] != NULL; i++)
      if (strcmp(s, dh3_request_method_names[i]) == 0) o->method = i;
    if (o->method < 0) dh3_request_bad(L, "field 'method' must be GET, POST or HEAD");
  }
  o->url = dh3_request_opt_string(L, o, "url", NULL);
  if (o->url == NULL) dh3_request_bad(L, "field 'url' is required");

  switch (dh3_request_known(L, o, "headers")) {
    case LUA_TNIL:
      break;
    case LUA_TTABLE: {
      size_t n = lua_rawlen(L, -1);
      int i;
      if (n > DH3_MAX_HEADERS) dh3_request_bad(L, "field 'headers' has more than %d items", DH3_MAX_HEADERS);
      o->n_headers = (int)n;
      for (i = 1; i <= o->n_headers; i++) {
        size_t len;
        const char *h;
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING)
          dh3_request_bad(L, "field 'headers' must hold strings (item %d is %s)", i,
                          luaL_typename(L, -1));
        h = lua_tolstring(L, -1, &len);
        /* a CR or LF would let a value inject headers of its own */
        if (strlen(h) != len || strchr(h, '\r') != NULL || strchr(h, '\n') != NULL)
          dh3_request_bad(L, "field 'headers' item %d contains a NUL, CR or LF byte", i);
        if (dh3_request_prefix_ci(h, len, "expect:")) o->user_expect = 1;
        if (dh3_request_prefix_ci(h, len, "user-agent:")) o->user_agent = 1;
        lua_pop(L, 1);
      }
      break;
    }
    default:
      dh3_request_bad(L, "field 'headers' must be an array of strings (got %s)",
                      luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  o->body = dh3_request_opt_string(L, o, "body", &o->body_len);
  if (o->body != NULL && o->method != DH3_METHOD_POST)
    dh3_request_bad(L, "field 'body' needs method POST");
  o->timeout_ms = dh3_request_opt_ms(L, o, "timeout");
  o->connect_timeout_ms = dh3_request_opt_ms(L, o, "connect_timeout");

  switch (dh3_request_known(L, o, "follow_redirects")) {
    case LUA_TNIL:
      break;
    case LUA_TBOOLEAN:
      o->follow_redirects = lua_toboolean(L, -1);
      break;
    default:
      dh3_request_bad(L, "field 'follow_redirects' must be a boolean (got %s)",
                      luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  o->download_to = dh3_request_opt_string(L, o, "download_to", NULL);
  if (o->download_to != NULL && (o->download_to[0] == '\0' || o->method == DH3_METHOD_HEAD))
    dh3_request_bad(L, "field 'download_to' must be a path, and the method GET or POST");
  o->expect_size = (curl_off_t)dh3_request_opt_integer(L, o, "expect_size", -1, 0,
                                                       LUA_MAXINTEGER);
  o->max_body = (size_t)dh3_request_opt_integer(L, o, "max_body", (lua_Integer)max_body, 1,
                                                DH3_MAX_BODY_LIMIT);
  dh3_request_known(L, o, "context"); /* any value: it is only kept */
  lua_pop(L, 1);
  /* Every key a known field? Counting the keys costs less than naming each: only a table with
     a key no read above found is walked again, to name that key in the error. */
  if (dh3_request_count_keys(L, 2) != o->given) dh3_util_check_fields(L, 2, dh3_request_fields);
}
/* }====================================================================== */

/* {======================================================================
** libcurl callbacks (C only: see the top of the file)
** ======================================================================= */

static void dh3_request_note(dh3_request *req, const char *fmt, ...) {
  va_list ap;
  if (req->note != NULL) return; /* the first explanation is the one that matters */
  req->note = malloc(DH3_NOTE_SIZE);
  if (req->note == NULL) return; /* out of memory: the flags and curl's code still tell */
  va_start(ap, fmt);
  vsnprintf(req->note, DH3_NOTE_SIZE, fmt, ap);
  va_end(ap);
}

/* A local file failure (the temp file, the destination): noted like any failure, and kept
   apart in io_error as well, so that the caller can tell a full disk or a missing folder from
   a network failure. */
static void dh3_request_io_fail(dh3_request *req, const char *fmt, ...) {
  va_list ap;
  req->io_failed = 1;
  if (req->io_error == NULL && (req->io_error = malloc(DH3_NOTE_SIZE)) != NULL) {
    va_start(ap, fmt);
    vsnprintf(req->io_error, DH3_NOTE_SIZE, fmt, ap);
    va_end(ap);
  }
  if (req->io_error != NULL) dh3_request_note(req, "%s", req->io_error);
}

static long dh3_request_parse_status(const char *buf, size_t len) {
  size_t i = 5; /* after "HTTP/" */
  long code = 0;
  int digits = 0;
  while (i < len && buf[i] != ' ') i++;
  while (i < len && buf[i] == ' ') i++;
  while (i < len && digits < 3 && buf[i] >= '0' && buf[i] <= '9') {
    code = code * 10 + (buf[i] - '0');
    i++;
    digits++;
  }
  return digits == 3 ? code : 0;
}

/* "Name: value\r\n" with name matched case-insensitively -> the trimmed value */
static int dh3_request_header_value(const char *line, size_t len, const char *lname,
                                    const char **value, size_t *vlen) {
  size_t i, end, n = strlen(lname);
  if (len <= n || line[n] != ':' || !dh3_request_prefix_ci(line, len, lname)) return 0;
  i = n + 1;
  while (i < len && (line[i] == ' ' || line[i] == '\t')) i++;
  end = len;
  while (end > i && (line[end - 1] == '\r' || line[end - 1] == '\n' || line[end - 1] == ' ' ||
                     line[end - 1] == '\t'))
    end--;
  *value = line + i;
  *vlen = end - i;
  return 1;
}

static int dh3_request_set_fact(char **slot, const char *v, size_t n) {
  char *p = malloc(n + 1);
  if (p == NULL) return 0;
  memcpy(p, v, n);
  p[n] = '\0';
  free(*slot);
  *slot = p;
  return 1;
}

static curl_off_t dh3_request_parse_size(const char *v, size_t n) {
  curl_off_t x = 0;
  size_t i;
  if (n == 0) return -1;
  for (i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    if (x > CURL_OFF_T_C(100000000000000)) return -1; /* 100 TB: nonsense, and no overflow */
    x = x * 10 + (v[i] - '0');
  }
  return x;
}

/* A new status line starts a new response (a redirect, a 100 Continue, a proxy's
   CONNECT answer): the facts and the body so far belonged to the previous one. */
static int dh3_request_new_response(dh3_request *req, long status) {
  free(req->retry_after);
  free(req->content_type);
  req->retry_after = req->content_type = NULL;
  req->content_length_n = -1;
  req->header_bytes = 0;
  req->body_len = 0;
  if (req->to_file && req->bytes > 0) {
    /* only a 2xx writes to the file and a 2xx is final, but never keep stray bytes */
    if (fflush(req->fp) != 0 || ftruncate(fileno(req->fp), 0) != 0) {
      req->write_errno = errno;
      return 0;
    }
    rewind(req->fp);
  }
  req->bytes = 0;
  req->status_seen = status;
  req->to_file = req->fp != NULL && DH3_IS_2XX(status);
  return 1;
}

size_t dh3_request_on_header(char *buf, size_t size, size_t nitems, void *userdata) {
  dh3_request *req = (dh3_request *)userdata;
  size_t len = size * nitems;
  const char *v;
  size_t vlen;
  int ok = 1;
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    if (!dh3_request_new_response(req, dh3_request_parse_status(buf, len))) {
      dh3_request_io_fail(req, "cannot write the temporary file: %s", strerror(req->write_errno));
      return 0;
    }
  }
  if (len > DH3_MAX_HEADER_BYTES - req->header_bytes) {
    req->too_large = 1;
    dh3_request_note(req, "response headers larger than %lu bytes",
                     (unsigned long)DH3_MAX_HEADER_BYTES);
    return 0; /* anything but len aborts the transfer */
  }
  req->header_bytes += len;
  if (dh3_request_header_value(buf, len, "retry-after", &v, &vlen)) {
    ok = dh3_request_set_fact(&req->retry_after, v, vlen);
  } else if (dh3_request_header_value(buf, len, "content-type", &v, &vlen)) {
    ok = dh3_request_set_fact(&req->content_type, v, vlen);
  } else if (dh3_request_header_value(buf, len, "content-length", &v, &vlen)) {
    req->content_length_n = dh3_request_parse_size(v, vlen);
  }
  if (!ok) {
    req->oom = 1;
    dh3_request_note(req, "out of memory for the response headers");
    return 0;
  }
  return len;
}

size_t dh3_request_on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
  dh3_request *req = (dh3_request *)userdata;
  size_t len = size * nmemb;
  if (len == 0) return 0;
  if (DH3_IS_2XX(req->status_seen) && req->expect_size >= 0 &&
      (curl_off_t)len > req->expect_size - req->bytes) {
    req->too_large = 1;
    dh3_request_note(req, "more than the expected %" CURL_FORMAT_CURL_OFF_T " bytes",
                     req->expect_size);
    return 0;
  }
  if (req->to_file) {
    if (fwrite(ptr, 1, len, req->fp) != len) {
      req->write_errno = errno;
      dh3_request_io_fail(req, "cannot write the temporary file: %s", strerror(req->write_errno));
      return 0;
    }
  } else {
    if (len > req->max_body - req->body_len) {
      req->too_large = 1;
      dh3_request_note(req, "response body larger than the limit of %lu bytes",
                       (unsigned long)req->max_body);
      return 0;
    }
    if (req->body_len + len > req->body_cap) {
      size_t need = req->body_len + len;
      size_t cap = req->body_cap > 0 ? req->body_cap : DH3_BODY_MIN_CAP;
      char *p;
      while (cap < need) cap = cap <= req->max_body / 2 ? cap * 2 : req->max_body;
      if (cap > req->max_body) cap = req->max_body; /* need <= max_body, checked above */
      p = realloc(req->body, cap);
      if (p == NULL) {
        req->oom = 1;
        dh3_request_note(req, "out of memory for the response body");
        return 0;
      }
      req->body = p;
      req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, ptr, len);
    req->body_len += len;
  }
  req->bytes += (curl_off_t)len;
  return len;
}
/* }====================================================================== */

/* {======================================================================
** The options a request sets: one table
** ======================================================================= */

/*
** Every libcurl option a request sets, on every request, in this order:
**   X(option, type, when, value, otherwise, must)
** The option gets `value` when `when` holds for this request (both are expressions of the
** request `req` and its parsed options `o`), else `otherwise`: libcurl's default, or dh3's
** where a comment says so. When the handle goes back to the pool, every option gets its
** `otherwise`, so an idle handle points at nothing of a request's (its header list and
** callback data are freed long before the handle is taken again) and keeps no copy of its
** URL or body. Nothing else sets a per-request option (pool.c sets the ones that are the
** same for every request of an engine, once per handle): a pooled handle is never reset,
** and this table is what keeps one request's options from reaching the next.
** must: 0 for an option refused only by a libcurl that lacks the feature, which then
** behaves as `otherwise` says anyway; a refused option with must 1 fails the request.
**
** The order matters where libcurl ties options together: the size of the body before the
** body (COPYPOSTFIELDS then copies exactly that many bytes, NULs included; set afterwards,
** libcurl would have used strlen()), and the body before the method (COPYPOSTFIELDS, even
** of NULL, makes a request a POST; POST 0 makes it a GET again, and NOBODY 1 a HEAD).
**
** No Accept-Encoding: an API answer is a few hundred bytes, which compression would not make
** faster (libcurl's decoder costs more per request than it saves), and a download must
** arrive as the very bytes whose size the service announced.
**
** A large image arrives in 128 KiB reads instead of libcurl's default 16 KiB: a sixth of the
** recv and poll calls, which is what kept downloads behind the curl tool (bench/RESULTS.md).
** Setting the size costs nothing: libcurl (7.88) allocates that buffer for each transfer.
**
** A POST (a create: not idempotent, it costs money) leaves once, or not at all. libcurl
** sends a request again by itself, on a new connection, when the connection it reused dies
** before any byte of the answer (Curl_retry_request: "Connection died, retrying a fresh
** connect"): a server that took the create and then closed would make a second task. So a
** POST never goes on a reused connection: FRESH_CONNECT opens one for it, and HTTP/1.1
** keeps that connection its own until the answer is in (no other transfer can join it, as
** one could join an HTTP/2 connection, and mark it reused while the create waits). The
** only other resend, an HTTP/2 REFUSED_STREAM, is for a stream the server did not process
** (RFC 9113, 8.7), and HTTP/1.1 has none. Once answered, the connection goes to the cache:
** a later read may reuse it, which is safe.
**
** CURLOPT_UNRESTRICTED_AUTH stays off (it is in no table): libcurl then drops Authorization
** (ours is in the header list) when a redirect leads to another host.
*/
#define DH3_O_POST (o->method == DH3_METHOD_POST)
#define DH3_O_HEAD (o->method == DH3_METHOD_HEAD)
#define DH3_DOWNLOAD_BUFFER (128L * 1024L)

#define DH3_REQUEST_OPTIONS(X)                                                                   \
  X(CURLOPT_PRIVATE, void *, 1, req, NULL, 1)                                                    \
  X(CURLOPT_HEADERFUNCTION, curl_write_callback, 1, dh3_request_on_header, NULL, 1)              \
  X(CURLOPT_HEADERDATA, void *, 1, req, NULL, 1)                                                 \
  X(CURLOPT_WRITEFUNCTION, curl_write_callback, 1, dh3_request_on_body, NULL, 1)                 \
  X(CURLOPT_WRITEDATA, void *, 1, req, NULL, 1)                                                  \
  X(CURLOPT_URL, const char *, 1, o->url, NULL, 1)                                               \
  /* libcurl does not copy the list: it stays ours until the transfer is finished */             \
  X(CURLOPT_HTTPHEADER, struct curl_slist *, req->headers != NULL, req->headers->list, NULL, 1)  \
  X(CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t, DH3_O_POST, o->body_len, -1, 1)                     \
  X(CURLOPT_COPYPOSTFIELDS, const char *, DH3_O_POST, o->body != NULL ? o->body : "", NULL, 1)   \
  X(CURLOPT_POST, long, DH3_O_POST, 1, 0, 1)                                                     \
  X(CURLOPT_NOBODY, long, DH3_O_HEAD, 1, 0, 1)                                                   \
  X(CURLOPT_FRESH_CONNECT, long, DH3_O_POST, 1, 0, 1)                                            \
  /* otherwise: dh3's (and libcurl's since 7.62); refused only without HTTP/2 */                 \
  X(CURLOPT_HTTP_VERSION, long, DH3_O_POST, CURL_HTTP_VERSION_1_1, CURL_HTTP_VERSION_2TLS, 0)    \
  /* 0: no overall limit; libcurl's own limit for the connection */                              \
  X(CURLOPT_TIMEOUT_MS, long, o->timeout_ms > 0, o->timeout_ms, 0, 1)                            \
  X(CURLOPT_CONNECTTIMEOUT_MS, long, o->connect_timeout_ms > 0, o->connect_timeout_ms, 0, 1)     \
  X(CURLOPT_FOLLOWLOCATION, long, o->follow_redirects, 1, 0, 1)                                  \
  X(CURLOPT_MAXREDIRS, long, o->follow_redirects, DH3_MAX_REDIRS, -1, 1)                         \
  X(CURLOPT_BUFFERSIZE, long, o->download_to != NULL, DH3_DOWNLOAD_BUFFER, CURL_MAX_WRITE_SIZE, 1) \
  DH3_REQUEST_OPTIONS_8_16(X)

#if LIBCURL_VERSION_NUM >= 0x081000
/* libcurl 8.16 can say the create rule directly; ignored by an older library at run time */
#define DH3_REQUEST_OPTIONS_8_16(X) X(CURLOPT_FORBID_RETRY_ON_REUSE, long, DH3_O_POST, 1, 0, 0)
#else
#define DH3_REQUEST_OPTIONS_8_16(X)
#endif

/* Sets every option of the table on req's handle, to this request's value or the default. */
static CURLcode dh3_request_set_options(dh3_request *req, const dh3_request_opts *o) {
  CURL *h = req->easy->curl;
  CURLcode rc;
  req->easy->errbuf[0] = '\0';
#define DH3_SET_OPTION(option, type, when, value, otherwise, must)                       \
  rc = curl_easy_setopt(h, option, (when) ? (type)(value) : (type)(otherwise));          \
  if (rc != CURLE_OK && (must)) return rc;
  DH3_REQUEST_OPTIONS(DH3_SET_OPTION)
#undef DH3_SET_OPTION
  return CURLE_OK;
}

/* Gives every option of the table its default, on a handle that is in no multi handle:
   CURLE_OK, or the error of the first default refused (the handle is then not reused). */
static CURLcode dh3_request_unset_options(dh3_easy *easy) {
  CURL *h = easy->curl;
  CURLcode rc;
#define DH3_UNSET_OPTION(option, type, when, value, otherwise, must)                     \
  rc = curl_easy_setopt(h, option, (type)(otherwise));                                   \
  if (rc != CURLE_OK && (must)) return rc;
  DH3_REQUEST_OPTIONS(DH3_UNSET_OPTION)
#undef DH3_UNSET_OPTION
  return CURLE_OK;
}
/* }====================================================================== */

/* {======================================================================
** Finishing, tearing down
** ======================================================================= */

/* Gives back what a transfer holds: its easy handle (its options unset, to the pool; freed
   when pool is NULL), the temp file (closed and removed) and the header list. The handle
   must have left the multi handle. */
void dh3_request_drop_transfer(dh3_request *req, dh3_pool *pool) {
  dh3_easy *easy = req->easy;
  req->easy = NULL;
  if (easy != NULL) {
    if (pool != NULL && dh3_request_unset_options(easy) == CURLE_OK) {
      dh3_pool_give(pool, easy);
    } else {
      dh3_pool_free_easy(easy);
    }
  }
  if (req->fp != NULL) {
    fclose(req->fp);
    req->fp = NULL;
  }
  if (req->tmp != NULL) {
    unlink(req->tmp);
    free(req->tmp);
    req->tmp = NULL;
  }
  dh3_pool_release_headers(req->headers);
  req->headers = NULL;
  req->to_file = 0;
}

/* Gives the file at tmp the name path, unless something already has that name: 0, or an
   errno (EEXIST: the name is taken, nothing changed). The temp name is gone after a 0. */
static int dh3_request_place_at(const char *tmp, const char *path) {
  int fd, err;
#ifdef DH3_HAVE_RENAMEAT2
  if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0) return 0;
  /* EINVAL: a file system without the flag; ENOSYS: a kernel without the call */
  if (errno != EINVAL && errno != ENOSYS) return errno;
#endif
  if (link(tmp, path) == 0) {
    /* Both names are ours now and hold the same bytes. Should the temp name stay (it cannot
       really fail: we made it, in a folder we just wrote to), it is a stray copy, no loss. */
    (void)unlink(tmp);
    return 0;
  }
  err = errno;
  if (err != EPERM && err != ENOTSUP && err != EOPNOTSUPP && err != ENOSYS)
    return err;
  /* A file system without hard links (FAT, some network shares): claim the name with an
     empty file of our own (O_EXCL: never one that was there), then rename over that one. */
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) return errno;
  close(fd);
  if (rename(tmp, path) == 0) return 0;
  err = errno;
  (void)unlink(path);
  return err;
}

/* "DIR/stem-k.ext" for dest "DIR/stem.ext" ("DIR/name-k" without an extension; a leading dot
   does not start one), or NULL when out of memory. */
static char *dh3_request_nth_name(const char *dest, int k) {
  const char *base = strrchr(dest, '/');
  const char *dot;
  size_t n = strlen(dest), stem;
  char *p;
  base = base != NULL ? base + 1 : dest;
  dot = strrchr(base, '.');
  stem = dot != NULL && dot > base ? (size_t)(dot - dest) : n;
  p = malloc(n + 16);
  if (p != NULL) snprintf(p, n + 16, "%.*s-%d%s", (int)stem, dest, k, dest + stem);
  return p;
}

/* Moves the finished temp file to req->dest, or to the first free name after it: 1, with
   req->dest the path written; or 0, with the failure noted (io_error). */
static int dh3_request_place(dh3_request *req) {
  char *path = req->dest;
  int k, err;
  for (k = 1; k <= DH3_MAX_FREE_NAME; k++) {
    if (k > 1 && (path = dh3_request_nth_name(req->dest, k)) == NULL) {
      dh3_request_io_fail(req, "out of memory for a file name");
      return 0;
    }
    err = dh3_request_place_at(req->tmp, path);
    if (err == 0) {
      if (path != req->dest) {
        free(req->dest);
        req->dest = path;
      }
      return 1;
    }
    if (err != EEXIST) dh3_request_io_fail(req, "cannot rename %s to %s: %s", req->tmp, path,
                                           strerror(err));
    if (path != req->dest) free(path);
    if (err != EEXIST) return 0;
    if (k == 1) {
      /* a folder where the file should go: a caller's mistake (the Lua layer saves into a
         folder under a name of its own), not a name to step around */
      struct stat st;
      if (lstat(req->dest, &st) == 0 && S_ISDIR(st.st_mode)) {
        dh3_request_io_fail(req, "cannot rename %s to %s: %s", req->tmp, req->dest,
                            strerror(EISDIR));
        return 0;
      }
    }
  }
  dh3_request_io_fail(req, "cannot save %s: it and the next %d names are taken", req->dest,
                      DH3_MAX_FREE_NAME - 1);
  return 0;
}

/* A download that ended: the temp file gets its own name, never one a file already has, or
   disappears. */
static void dh3_request_finalize(dh3_request *req) {
  FILE *fp = req->fp;
  int good = req->code == CURLE_OK && req->to_file && DH3_IS_2XX(req->status_seen) &&
             !req->too_large;
  req->fp = NULL;
  if (good && req->expect_size >= 0 && req->bytes != req->expect_size) {
    req->size_mismatch = 1;
    good = 0;
    dh3_request_note(req, "received %" CURL_FORMAT_CURL_OFF_T " bytes, expected %"
                     CURL_FORMAT_CURL_OFF_T, req->bytes, req->expect_size);
  }
  if (good && req->content_length_n >= 0 && req->bytes != req->content_length_n) {
    req->size_mismatch = 1;
    good = 0;
    dh3_request_note(req, "received %" CURL_FORMAT_CURL_OFF_T " bytes, Content-Length was %"
                     CURL_FORMAT_CURL_OFF_T, req->bytes, req->content_length_n);
  }
  /* fclose flushes: a full disk shows up here. No fsync: it can stall the caller's
     frame for a long time, and the new name appears atomically for readers without it. */
  if (fp != NULL && fclose(fp) != 0 && good) {
    good = 0;
    dh3_request_io_fail(req, "cannot write %s: %s", req->tmp, strerror(errno));
  }
  if (good && !dh3_request_place(req)) good = 0;
  if (good) {
    req->finalized = 1;
  } else {
    unlink(req->tmp);
    if (req->code == CURLE_OK && !DH3_IS_2XX(req->status_seen))
      dh3_request_note(req, "HTTP status %ld: %s was not written", req->status_seen,
                       req->dest);
  }
  free(req->tmp);
  req->tmp = NULL;
  req->to_file = 0;
}

/* Called by the engine once the easy handle left the multi handle, before the transfer is
   dropped (dh3_request_drop_transfer): the facts Lua will see are read now, and a download
   is finished. */
void dh3_request_complete(dh3_request *req, CURLcode code) {
  CURL *h = req->easy->curl;
  long v;
  curl_off_t t;
  req->code = code;
  if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &v) == CURLE_OK) req->status = v;
  if (curl_easy_getinfo(h, CURLINFO_HTTP_VERSION, &v) == CURLE_OK) req->http_version = v;
  if (curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &v) == CURLE_OK) req->request_size = v;
  if (curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &v) == CURLE_OK) req->connects = v;
  if (curl_easy_getinfo(h, CURLINFO_TOTAL_TIME_T, &t) == CURLE_OK) req->time_total = t;
  if (curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &t) == CURLE_OK) req->time_connect = t;
  if (curl_easy_getinfo(h, CURLINFO_STARTTRANSFER_TIME_T, &t) == CURLE_OK)
    req->time_start = t;
  req->handle_uses = req->easy->uses;
  dh3_pool_release_headers(req->headers); /* libcurl is done with it */
  req->headers = NULL;
  if (code != CURLE_OK && req->easy->errbuf[0] != '\0') {
    /* the handle's buffer serves its next request: keep a copy (none when out of memory:
       curl's own name for the code still tells) */
    size_t n = strnlen(req->easy->errbuf, CURL_ERROR_SIZE - 1);
    req->detail = malloc(n + 1);
    if (req->detail != NULL) {
      memcpy(req->detail, req->easy->errbuf, n);
      req->detail[n] = '\0';
    }
  }
  if (req->dest != NULL) {
    dh3_request_finalize(req);
  } else if (code == CURLE_OK && DH3_IS_2XX(req->status_seen) && req->expect_size >= 0 &&
             req->bytes != req->expect_size) {
    req->size_mismatch = 1;
    dh3_request_note(req, "received %" CURL_FORMAT_CURL_OFF_T " bytes, expected %"
                     CURL_FORMAT_CURL_OFF_T, req->bytes, req->expect_size);
  }
}

/* Frees everything the request holds (a handle it still holds, one whose transfer never
   started, is cleaned up, not pooled): the last step of its close. Idempotent. */
void dh3_request_free(dh3_request *req) {
  dh3_request_drop_transfer(req, NULL);
  free(req->note);
  free(req->detail);
  free(req->io_error);
  req->note = req->detail = req->io_error = NULL;
  free(req->body);
  free(req->dest);
  free(req->retry_after);
  free(req->content_type);
  req->body = req->dest = req->retry_after = req->content_type = NULL;
  req->body_len = req->body_cap = 0;
}
/* }====================================================================== */

/* {======================================================================
** Building
** ======================================================================= */

/* Undoes a transfer that could not be built: pushes nil, message, and kind when not NULL
   ("io": a local file, not the request, is what failed); returns how many it pushed. */
static int dh3_request_fail(lua_State *L, dh3_pool *pool, dh3_request *req, const char *kind,
                            const char *fmt, ...) {
  va_list ap;
  dh3_request_drop_transfer(req, pool); /* its handle was never added to a multi handle */
  lua_pushnil(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  if (kind == NULL) return 2;
  lua_pushstring(L, kind);
  return 3;
}

/*
** For engine:request{...}. Stack: 1 the engine, 2 the options (raises on a caller's mistake
** there). Pushes a new request userdata, its context set, all zeros besides (its flight too:
** NEW, for engine.c to fill in). When its transfer is ready to be added to a multi handle
** (an easy handle from pool, every option set), returns 0; else returns the number of
** values it pushed above the userdata, nil, message [, kind], with the transfer given back.
** *out: the request, either way. pool: the engine's; max_body: the engine's default;
** ua_header: "User-Agent: ...", sent unless the caller's headers have one (NULL: none).
*/
int dh3_request_new(lua_State *L, dh3_pool *pool, size_t max_body, const char *ua_header,
                    dh3_request **out) {
  dh3_request_opts o;
  dh3_request *req;
  CURLcode rc;
  int ud, fd;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  dh3_request_parse(L, max_body, &o);

  req = (dh3_request *)lua_newuserdatauv(L, sizeof(*req), DH3_REQUEST_NUV);
  ud = lua_gettop(L);
  memset(req, 0, sizeof(*req));
  req->method = o.method;
  req->max_body = o.max_body;
  req->expect_size = o.expect_size;
  req->content_length_n = -1;
  *out = req;
  luaL_setmetatable(L, DH3_REQUEST_MT); /* from here __gc frees whatever is attached */
  dh3_request_field(L, "context");
  lua_setiuservalue(L, ud, DH3_REQUEST_UV_CONTEXT);

  if (o.download_to != NULL) {
    size_t n = strlen(o.download_to);
    req->dest = malloc(n + 1);
    req->tmp = malloc(n + sizeof(DH3_TEMP_SUFFIX));
    if (req->dest == NULL || req->tmp == NULL)
      return dh3_request_fail(L, pool, req, NULL, "out of memory");
    memcpy(req->dest, o.download_to, n + 1);
    memcpy(req->tmp, o.download_to, n);
    memcpy(req->tmp + n, DH3_TEMP_SUFFIX, sizeof(DH3_TEMP_SUFFIX));
    /* created at once: from here req->tmp always names a file of ours, which every
       failure path (and __gc) unlinks */
    fd = dh3_request_mktemp(req->tmp); /* O_EXCL, beside the destination */
    if (fd < 0) {
      int err = errno;
      free(req->tmp); /* only a template: nothing to unlink */
      req->tmp = NULL;
      return dh3_request_fail(L, pool, req, "io", "cannot create a temporary file for %s: %s",
                              req->dest, strerror(err));
    }
    req->fp = fdopen(fd, "wb");
    if (req->fp == NULL) {
      int err = errno;
      close(fd);
      return dh3_request_fail(L, pool, req, "io", "cannot open a temporary file for %s: %s",
                              req->dest, strerror(err));
    }
  }
  { /* the header list: the caller's headers (at most DH3_MAX_HEADERS), then ours */
    const char *lines[DH3_MAX_HEADERS + 2];
    int i, n = 0;
    if (dh3_request_field(L, "headers") == LUA_TTABLE) {
      for (i = 1; i <= o.n_headers; i++) {
        lua_rawgeti(L, -1, i);
        lines[n++] = lua_tostring(L, -1); /* the table keeps the string: valid until we return */
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
    /* no "Expect: 100-continue" round trip (libcurl adds it to large bodies) */
    if (o.method == DH3_METHOD_POST && !o.user_expect) lines[n++] = "Expect:";
    if (!o.user_agent && ua_header != NULL) lines[n++] = ua_header;
    req->headers = dh3_pool_headers(pool, lines, n);
    if (req->headers == NULL) return dh3_request_fail(L, pool, req, NULL, "out of memory");
  }

  req->easy = dh3_pool_take(pool, &rc);
  if (req->easy == NULL)
    return dh3_request_fail(L, pool, req, NULL, "cannot make a libcurl handle: %s",
                            rc != CURLE_OK ? curl_easy_strerror(rc) : "out of memory");
  rc = dh3_request_set_options(req, &o);
  if (rc != CURLE_OK)
    return dh3_request_fail(L, pool, req, NULL, "cannot set up the request: %s",
                            curl_easy_strerror(rc));
  lua_settop(L, ud);
  return 0;
}
/* }====================================================================== */

/* {======================================================================
** The result table
** ======================================================================= */

static void dh3_request_set_string(lua_State *L, const char *key, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, key);
}

static void dh3_request_set_seconds(lua_State *L, const char *key, curl_off_t us) {
  lua_pushnumber(L, (lua_Number)us / 1e6);
  lua_setfield(L, -2, key);
}

static void dh3_request_push_message(lua_State *L, dh3_request *req) {
  luaL_Buffer b;
  int noted = req->note != NULL && req->note[0] != '\0';
  if (!noted && req->code == CURLE_OK) {
    lua_pushnil(L);
    return;
  }
  luaL_buffinit(L, &b);
  if (noted) luaL_addstring(&b, req->note);
  if (req->code != CURLE_OK) {
    size_t len = req->detail != NULL ? strlen(req->detail) : 0;
    while (len > 0 && (req->detail[len - 1] == '\n' || req->detail[len - 1] == '\r')) len--;
    if (noted) luaL_addstring(&b, " (");
    luaL_addstring(&b, curl_easy_strerror(req->code));
    if (len > 0) {
      luaL_addstring(&b, ": ");
      luaL_addlstring(&b, req->detail, len);
    }
    if (noted) luaL_addchar(&b, ')');
  }
  luaL_pushresult(&b);
}

/* Pushes the result table of a DONE request (ud: its userdata, or nil). What the caller acts
   on, and no more: a success has 7 fields (a table of 8 slots, allocated once); Retry-After,
   the facts of a failure and a download's path are added only when there are any. The
   transfer's diagnostics (timings, HTTP version, connections made, the response's
   Content-Type and Content-Length) are request:info()'s. */
void dh3_request_push_result(lua_State *L, dh3_request *req, int ud) {
  int ok = req->code == CURLE_OK && !req->too_large && !req->size_mismatch && !req->oom &&
           (req->dest == NULL || req->finalized);
  lua_createtable(L, 0, 8);
  lua_pushvalue(L, ud);
  lua_setfield(L, -2, "request");
  lua_pushboolean(L, ok);
  lua_setfield(L, -2, "ok");
  lua_pushinteger(L, (lua_Integer)req->status);
  lua_setfield(L, -2, "status");
  lua_pushinteger(L, (lua_Integer)req->code);
  lua_setfield(L, -2, "curl_code");
  lua_pushinteger(L, (lua_Integer)req->bytes);
  lua_setfield(L, -2, "bytes");
  dh3_request_set_seconds(L, "time", req->time_total);
  dh3_request_set_string(L, "retry_after", req->retry_after);
  /* the whole body of the last response: not when it went to the file, and not the
     piece a failed transfer (timeout, reset, over a limit) left behind */
  if (req->code == CURLE_OK && req->status_seen != 0 && !req->finalized &&
      (req->dest == NULL || !DH3_IS_2XX(req->status_seen))) {
    lua_pushlstring(L, req->body != NULL ? req->body : "", req->body_len);
    lua_setfield(L, -2, "body");
  }
  if (req->code != CURLE_OK) {
    dh3_request_set_string(L, "curl_error", dh3_util_error_name(req->code));
    /* 0: no byte of the request left (what tells a create that certainly made nothing) */
    lua_pushinteger(L, (lua_Integer)req->request_size);
    lua_setfield(L, -2, "request_size");
  }
  dh3_request_push_message(L, req);
  lua_setfield(L, -2, "message");
  if (req->too_large) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "too_large");
  }
  if (req->size_mismatch) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "size_mismatch");
  }
  if (req->io_failed) {
    /* a local failure, not the network's: the caller reports it as such */
    dh3_request_set_string(L, "io_error", req->io_error != NULL ? req->io_error
                                          : "a local file could not be written");
  }
  if (req->finalized) dh3_request_set_string(L, "path", req->dest);
}

/* next_done handed the result out: what the result copied is freed (the body is now a Lua
   string in it, as the note and detail are). */
void dh3_request_delivered(dh3_request *req) {
  free(req->body);
  free(req->note);
  free(req->detail);
  free(req->io_error);
  req->body = req->note = req->detail = req->io_error = NULL;
  req->body_len = req->body_cap = 0;
}

/* request:progress()'s values: bytes_received, total (Content-Length or expect_size, or nil) */
void dh3_request_push_progress(lua_State *L, const dh3_request *req) {
  lua_pushinteger(L, (lua_Integer)req->bytes);
  if (req->content_length_n >= 0) {
    lua_pushinteger(L, (lua_Integer)req->content_length_n);
  } else if (req->expect_size >= 0) {
    lua_pushinteger(L, (lua_Integer)req->expect_size);
  } else {
    lua_pushnil(L);
  }
}

/* request:info()'s table, for a finished transfer: {http_version, time, time_connect,
   time_starttransfer, request_size, connects, handle_uses, content_type, content_length} */
void dh3_request_push_info(lua_State *L, const dh3_request *req) {
  const char *hv = NULL;
  lua_createtable(L, 0, 9);
  switch (req->http_version) {
    case CURL_HTTP_VERSION_1_0: hv = "1.0"; break;
    case CURL_HTTP_VERSION_1_1: hv = "1.1"; break;
    case CURL_HTTP_VERSION_2_0: hv = "2"; break;
    case CURL_HTTP_VERSION_3: hv = "3"; break;
    default: break;
  }
  dh3_request_set_string(L, "http_version", hv);
  dh3_request_set_seconds(L, "time", req->time_total);
  dh3_request_set_seconds(L, "time_connect", req->time_connect);
  dh3_request_set_seconds(L, "time_starttransfer", req->time_start);
  lua_pushinteger(L, (lua_Integer)req->request_size);
  lua_setfield(L, -2, "request_size");
  lua_pushinteger(L, (lua_Integer)req->connects);
  lua_setfield(L, -2, "connects");
  /* 1: the transfer had a new easy handle; n: the handle's nth (the pool reused it) */
  lua_pushinteger(L, (lua_Integer)req->handle_uses);
  lua_setfield(L, -2, "handle_uses");
  dh3_request_set_string(L, "content_type", req->content_type);
  if (req->content_length_n >= 0) {
    lua_pushinteger(L, (lua_Integer)req->content_length_n);
    lua_setfield(L, -2, "content_length");
  }
}

/* "GET", "POST download", ...: what the request is, for its __tostring */
const char *dh3_request_describe(const dh3_request *req) {
  static const char *const names[][2] = {
    {"GET", "GET download"}, {"POST", "POST download"}, {"HEAD", "HEAD download"}
  };
  return names[req->method][req->dest != NULL];
}
/* }====================================================================== */
