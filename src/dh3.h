/*
** dh3.h: the one internal header of the C core (the Lua module `dh3.core`).
**
** Objects, one C file each:
**   core.c     luaopen_dh3_core, module functions, curl_global_init, curl error names
**   engine.c   "dh3.engine": the multi handle, the pool of idle easy handles,
**              the in-flight list and the FIFO done queue
**   request.c  "dh3.request": one transfer (options, callbacks, memory body or
**              streamed temp file, the result facts)
**   json.c     the JSON bridge over a private lua-cjson instance
**   journal.c  "dh3.journal_file": the journal's lock (on its inode), durable appends,
**              atomic rewrite, reading without a lock
**   fs.c       core.mkdir: a folder and its missing parents (downloads into "dir/")
**
** Only luaopen_dh3_core is exported; everything here has hidden visibility.
*/
#ifndef DH3_H
#define DH3_H

/* mkstemp, fdopen, clock_gettime, ftruncate, fileno: POSIX.1-2008 under -std=c99 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#define DH3_VERSION "0.1.0"
#define DH3_ENGINE_MT "dh3.engine"
#define DH3_REQUEST_MT "dh3.request"
#define DH3_JOURNAL_MT "dh3.journal_file"

#define DH3_DEFAULT_MAX_BODY ((size_t)4 * 1024 * 1024)
#define DH3_DEFAULT_MAX_CONNECTIONS 64L
/* the largest max_body accepted: half the address space (and a Lua integer) */
#define DH3_MAX_BODY_LIMIT                                                       \
  ((lua_Integer)(SIZE_MAX / 2 < (size_t)LUA_MAXINTEGER ? SIZE_MAX / 2 : (size_t)LUA_MAXINTEGER))
#define DH3_MAX_HEADER_BYTES ((size_t)16 * 1024) /* all header lines of one response */
#define DH3_MAX_REDIRS 5L
#define DH3_MAX_POOL 256 /* idle easy handles kept at most */

/* user value slots */
#define DH3_ENGINE_UV_ANCHORS 1  /* engine: {[luaL_ref] = request userdata} */
#define DH3_REQUEST_UV_CONTEXT 1 /* request: the caller's context value */
#define DH3_REQUEST_UV_ANCHORS 2 /* request: its engine's anchor table while anchored */

typedef struct dh3_engine dh3_engine;
typedef struct dh3_request dh3_request;
typedef struct dh3_easy dh3_easy;
typedef struct dh3_headers dh3_headers;

/* A request header list, shared by the requests that send the same headers: the engine keeps
   the DH3_HEADER_CACHE it made last, and each request holds a reference while its transfer
   runs (libcurl reads the list then, and does not copy it). */
struct dh3_headers {
  struct curl_slist *list;
  int refs;
};
#define DH3_HEADER_CACHE 3 /* a client's reads, its creates (with "Expect:"), its downloads */

/* An easy handle, pooled by its engine, with what lives as long as it does. The options
   that are the same for every request of an engine are set once, when the handle is made
   (dh3_engine_take_easy); a request sets only its own (request.c), so a handle is never
   reset between transfers. */
struct dh3_easy {
  CURL *curl;
  int big_buffer;               /* CURLOPT_BUFFERSIZE is raised (a download's) */
  char errbuf[CURL_ERROR_SIZE]; /* CURLOPT_ERRORBUFFER */
};

#define DH3_NOTE_SIZE 320

/* curl_easy_setopt(h, opt, val), returning its error from the calling function (which has
   CURL *h and CURLcode rc in scope): for the option sets of engine.c and request.c */
#define DH3_SET(opt, val)                                            \
  do {                                                               \
    if ((rc = curl_easy_setopt(h, opt, val)) != CURLE_OK) return rc; \
  } while (0)

typedef enum {
  DH3_REQ_NEW = 0,   /* being set up inside engine:request (never seen by Lua) */
  DH3_REQ_ACTIVE,    /* in the multi handle, on the engine's active list */
  DH3_REQ_DONE,      /* finished, on the engine's done queue, not yet delivered */
  DH3_REQ_DELIVERED, /* handed out by next_done */
  DH3_REQ_CANCELLED  /* cancelled, or its engine was closed before delivery */
} dh3_req_state;

struct dh3_engine {
  CURLM *multi;
  dh3_easy **pool; /* idle easy handles, pointing at no request */
  int pool_len, pool_cap;
  dh3_request *active; /* doubly linked list of ACTIVE requests */
  dh3_request *done_head, *done_tail; /* FIFO of DONE requests (next pointers) */
  int n_active, n_done;
  char *user_agent, *ca_file, *proxy; /* owned, malloc'd */
  char *ua_header;                     /* "User-Agent: " user_agent */
  dh3_headers *headers[DH3_HEADER_CACHE]; /* most recent first; each holds a reference */
  size_t max_body;
  long max_connections;
  int closed;
};

struct dh3_request {
  dh3_engine *engine; /* non-NULL while ACTIVE or DONE; an engine that closes clears it */
  dh3_easy *easy;     /* owned while ACTIVE (or NEW); back to the pool once finished */
  dh3_req_state state;
  dh3_request *prev, *next; /* links in the active list or the done queue */
  int closed;               /* __gc / __close ran: heap freed */
  int anchor;               /* its luaL_ref in the engine's anchor table, or LUA_NOREF */
  int method;               /* index into the method names of request.c */
  dh3_headers *headers; /* a reference, while the transfer needs it */
  size_t max_body;
  curl_off_t expect_size; /* -1: not given */

  /* the body of the current response */
  char *body;
  size_t body_len, body_cap;
  curl_off_t bytes; /* body bytes of the current response (file or memory) */

  /* download mode */
  char *dest;  /* destination path (owned) */
  char *tmp;   /* temp path beside it while the file exists (owned) */
  FILE *fp;    /* the open temp file */
  int to_file; /* the current response is 2xx: its body goes to fp */
  int finalized;
  int write_errno;
  int io_failed;  /* a local file could not be made, written or given its name */
  char *io_error; /* ... and why (DH3_NOTE_SIZE bytes), or NULL when out of memory */

  /* the current response's header facts, reset on each status line */
  long status_seen;
  size_t header_bytes;
  char *retry_after, *content_type; /* owned, as received */
  curl_off_t content_length_n;       /* -1: none or not a number */
  int too_large, size_mismatch, oom;

  /* facts gathered once curl is done (dh3_request_complete) */
  CURLcode code;
  long status, http_version, request_size, connects;
  curl_off_t time_total, time_connect, time_start; /* microseconds */
  /* failures only, so a request that went well allocates neither (and its userdata,
     which the collector counts, stays small) */
  char *note;   /* our own explanation of a failure (DH3_NOTE_SIZE bytes), or NULL */
  char *detail; /* libcurl's error text (a copy of the handle's errbuf), or NULL */
};

/* core.c */
const char *dh3_core_error_name(CURLcode code);
double dh3_core_now(void);
void dh3_core_check_fields(lua_State *L, int idx, const char *const *fields);

/* engine.c */
void dh3_engine_open(lua_State *L);
int dh3_engine_new(lua_State *L);
dh3_easy *dh3_engine_take_easy(dh3_engine *e, CURLcode *rc);
void dh3_engine_give_easy(dh3_engine *e, dh3_easy *easy);
void dh3_engine_free_easy(dh3_easy *easy);
dh3_headers *dh3_engine_headers(dh3_engine *e, const char *const *lines, int n);
void dh3_headers_release(dh3_headers *h);
void dh3_engine_link_active(dh3_engine *e, dh3_request *req);
void dh3_engine_remove(dh3_engine *e, dh3_request *req);

/* request.c */
void dh3_request_open(lua_State *L);
int dh3_request_new(lua_State *L, dh3_engine *e);
void dh3_request_complete(dh3_request *req, CURLcode code);
void dh3_request_drop_transfer(dh3_request *req);
void dh3_request_push_result(lua_State *L, dh3_request *req, int ud);
void dh3_request_delivered(dh3_request *req);
/* the libcurl header and write callbacks: not static only so that fuzz/response.c can feed
   them a response as libcurl would */
size_t dh3_request_on_header(char *buf, size_t size, size_t nitems, void *userdata);
size_t dh3_request_on_body(char *ptr, size_t size, size_t nmemb, void *userdata);

/* json.c */
void dh3_json_open(lua_State *L);

/* journal.c */
void dh3_journal_open(lua_State *L);
int dh3_journal_new(lua_State *L);

/* fs.c: core.mkdir, folders and their missing parents (for downloads) */
int dh3_fs_mkdir(lua_State *L);

#endif
