/*
** dh3.h: the one internal header of the C core (the Lua module `dh3.core`).
**
** The files, what each owns, and which of the others it calls. The calls go down this
** tree only, never up or sideways, so each file can be read (and changed) knowing only
** the ones below it:
**
**   core.c       the module's entry: luaopen_dh3_core, the function table,
**                curl_global_init once per process, the pin
**                calls engine, journal, json, fs, interrupt, util
**   engine.c     "dh3.engine" and being in flight: the multi handle; adding a request,
**                anchoring it, every change of its state, cancelling, releasing; the
**                active list and the done queue; the methods of "dh3.request"; the
**                socket-action mode (libcurl's socket and timer callbacks record the
**                descriptors and the timeout for a host's own event loop)
**                calls request, pool, util
**   request.c    one transfer, built and finished: its options (parsed, and set on a
**                handle through one table), the header and body callbacks, the temp
**                file and its placement, the result table
**                calls pool, util
**   pool.c       idle easy handles (made with the engine's options) and the shared
**                request header lists                       calls nothing of ours
**   util.c       the clock and HTTP dates, option-field checks, curl error names
**                                                           calls nothing of ours
**   json.c       the JSON bridge over a private lua-cjson   calls nothing of ours
**   journal.c    "dh3.journal_file": the journal's lock, durable appends, atomic
**                rewrite, reading without a lock            calls nothing of ours
**   fs.c         core.mkdir                                 calls nothing of ours
**   interrupt.c  core.trap_interrupt, core.interrupted      calls nothing of ours
**   compat.h     the 5.4 API the core uses, on 5.1, 5.2, 5.3 and LuaJIT too, and the
**                rules the code keeps so that it builds and behaves the same on each
**
** Below, each file's interface is in a section of its own. Only luaopen_dh3_core is
** exported; everything here has hidden visibility.
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

#include "compat.h" /* every difference between the Luas we build for (5.1 to 5.4, LuaJIT) */

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
#define DH3_NOTE_SIZE 320

/* {======================================================================
** util.c
** ======================================================================= */
double dh3_util_now(void);
const char *dh3_util_error_name(CURLcode code);
void dh3_util_check_fields(lua_State *L, int idx, const char *const *fields);
int dh3_util_now_l(lua_State *L);            /* core.now */
int dh3_util_parse_http_date(lua_State *L);  /* core.parse_http_date */
/* }====================================================================== */

/* {======================================================================
** pool.c
** ======================================================================= */

/* An easy handle, pooled, with what lives as long as it does. */
typedef struct dh3_easy {
  CURL *curl;
  unsigned long uses;           /* transfers it was taken for (request:info().handle_uses) */
  char errbuf[CURL_ERROR_SIZE]; /* CURLOPT_ERRORBUFFER */
} dh3_easy;

/* A request header list, shared by the requests that send the same headers: the pool keeps
   the DH3_HEADER_CACHE it made last, and each request holds a reference while its transfer
   runs (libcurl reads the list then, and does not copy it). */
typedef struct dh3_headers {
  struct curl_slist *list;
  int refs;
} dh3_headers;
#define DH3_HEADER_CACHE 3 /* a client's reads, its creates (with "Expect:"), its downloads */

typedef struct dh3_pool {
  dh3_easy **idle; /* idle handles, pointing at nothing of a request's */
  int len, cap;
  const char *ca_file, *proxy; /* the engine's (borrowed: it outlives the pool's use of them) */
  dh3_headers *headers[DH3_HEADER_CACHE]; /* most recent first; each holds a reference */
  int closed;
} dh3_pool;

int dh3_pool_init(dh3_pool *p, int cap, const char *ca_file, const char *proxy);
dh3_easy *dh3_pool_take(dh3_pool *p, CURLcode *rc);
void dh3_pool_give(dh3_pool *p, dh3_easy *easy);
void dh3_pool_free_easy(dh3_easy *easy);
dh3_headers *dh3_pool_headers(dh3_pool *p, const char *const *lines, int n);
void dh3_pool_release_headers(dh3_headers *h);
void dh3_pool_close(dh3_pool *p);
/* }====================================================================== */

/* {======================================================================
** request.c
** ======================================================================= */

typedef struct dh3_engine dh3_engine;
typedef struct dh3_request dh3_request;

typedef enum {
  DH3_REQ_NEW = 0,   /* being set up inside engine:request (never seen by Lua) */
  DH3_REQ_ACTIVE,    /* in the multi handle, on the engine's active list */
  DH3_REQ_DONE,      /* finished, on the engine's done queue, not yet delivered */
  DH3_REQ_DELIVERED, /* handed out by next_done */
  DH3_REQ_CANCELLED  /* cancelled, or its engine was closed before delivery */
} dh3_req_state;

/* A request being in flight: engine.c's alone (request.c only zeroes it, making a request). */
typedef struct dh3_flight {
  dh3_engine *engine;       /* non-NULL while ACTIVE or DONE; an engine that closes clears it */
  dh3_req_state state;
  dh3_request *prev, *next; /* links in the active list or the done queue */
  int anchor;               /* its luaL_ref in the engine's anchor table, or LUA_NOREF */
} dh3_flight;

/* user values of a request userdata */
#define DH3_REQUEST_UV_CONTEXT 1 /* the caller's context value (request.c sets it) */
#define DH3_REQUEST_UV_ANCHORS 2 /* its engine's anchor table while anchored (engine.c's) */
#define DH3_REQUEST_NUV 2

struct dh3_request {
  dh3_flight flight; /* engine.c's */
  int closed;        /* __gc / __close ran: heap freed (engine.c's, which owns the methods) */

  /* the rest is request.c's */
  dh3_easy *easy;       /* owned while the transfer is built or runs; back to the pool after */
  int method;           /* index into the method names of request.c */
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
  unsigned long handle_uses; /* the easy handle's uses, this transfer included */
  curl_off_t time_total, time_connect, time_start; /* microseconds */
  /* failures only, so a request that went well allocates neither (and its userdata,
     which the collector counts, stays small) */
  char *note;   /* our own explanation of a failure (DH3_NOTE_SIZE bytes), or NULL */
  char *detail; /* libcurl's error text (a copy of the handle's errbuf), or NULL */
};

int dh3_request_new(lua_State *L, dh3_pool *pool, size_t max_body, const char *ua_header,
                    dh3_request **out);
void dh3_request_complete(dh3_request *req, CURLcode code);
void dh3_request_drop_transfer(dh3_request *req, dh3_pool *pool);
void dh3_request_push_result(lua_State *L, dh3_request *req, int ud);
void dh3_request_delivered(dh3_request *req);
void dh3_request_free(dh3_request *req);
void dh3_request_push_progress(lua_State *L, const dh3_request *req);
void dh3_request_push_info(lua_State *L, const dh3_request *req);
const char *dh3_request_describe(const dh3_request *req);
/* the libcurl header and write callbacks: not static only so that fuzz/response.c can feed
   them a response as libcurl would */
size_t dh3_request_on_header(char *buf, size_t size, size_t nitems, void *userdata);
size_t dh3_request_on_body(char *ptr, size_t size, size_t nmemb, void *userdata);
/* }====================================================================== */

/* {======================================================================
** engine.c
** ======================================================================= */
void dh3_engine_open(lua_State *L); /* the metatables of "dh3.engine" and "dh3.request" */
int dh3_engine_new(lua_State *L);   /* core.engine */
/* }====================================================================== */

/* {======================================================================
** The leaves core.c registers
** ======================================================================= */

/* json.c */
void dh3_json_open(lua_State *L);

/* journal.c */
void dh3_journal_open(lua_State *L);
int dh3_journal_new(lua_State *L);

/* fs.c: core.mkdir, folders and their missing parents (for downloads) */
int dh3_fs_mkdir(lua_State *L);

/* interrupt.c: core.trap_interrupt, core.interrupted */
int dh3_interrupt_trap(lua_State *L);
int dh3_interrupt_seen(lua_State *L);
/* }====================================================================== */

#endif
