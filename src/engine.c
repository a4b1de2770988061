/*
** engine.c: "dh3.engine", one libcurl multi handle.
**
** Owns: the CURLM, a pool of idle easy handles (the connections themselves live in the
** multi's connection cache, so reuse works whether or not an easy handle is reused), the
** list of ACTIVE requests and the FIFO queue of DONE ones. An easy handle gets the
** engine's own options (user agent, TLS, callbacks...) once, when it is made, and is never
** reset: a request sets only the options of its own (request.c).
**
** Anchoring: the engine's user value 1 is a table holding every request userdata from
** engine:request until next_done delivers it (or it is cancelled), so a request the caller
** dropped still completes and is delivered. A request is held under its luaL_ref (kept in
** req->anchor): the references are small integers reused through luaL_ref's free list, so
** the table is an array that stops growing at the most requests ever in flight. (Keyed by
** request, the table had to rebuild its hash part on nearly every request once full:
** bench/RESULTS.md.)
** The request holds that same table as its user value 2 (so cancel can un-anchor it)
** but never the engine itself: an engine the caller drops is collected, and its __gc
** cancels whatever was in flight.
**
** lua_close and the collector may finalize an engine and its requests in any order, but
** no memory is freed before all of their finalizers ran. So: a request finalized while
** still on an engine's list removes itself (req->engine is valid: an engine that closes
** first clears req->engine on every request it holds).
**
** No Lua runs inside libcurl: perform() calls curl_multi_perform and
** curl_multi_info_read, and only C state changes until it returns.
*/
#include "dh3.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char *dh3_engine_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p != NULL) memcpy(p, s, n);
  return p;
}

/* {======================================================================
** Helpers request.c uses
** ======================================================================= */

void dh3_engine_free_easy(dh3_easy *easy) {
  if (easy == NULL) return;
  curl_easy_cleanup(easy->curl);
  free(easy);
}

/* The options that are the same for every request of engine e. */
static CURLcode dh3_engine_setup_easy(dh3_engine *e, dh3_easy *easy) {
  CURL *h = easy->curl;
  CURLcode rc;
  DH3_SET(CURLOPT_ERRORBUFFER, easy->errbuf);
  DH3_SET(CURLOPT_NOSIGNAL, 1L); /* no SIGALRM into a host's process, no longjmp */
#if LIBCURL_VERSION_NUM >= 0x075500
  DH3_SET(CURLOPT_PROTOCOLS_STR, "http,https");
  DH3_SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  DH3_SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  DH3_SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  /* refused only by a libcurl without HTTP/2, which then speaks HTTP/1.1: fine */
  (void)curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  DH3_SET(CURLOPT_TCP_KEEPALIVE, 1L);
  /* the defaults, said out loud: there is no option to turn verification off */
  DH3_SET(CURLOPT_SSL_VERIFYPEER, 1L);
  DH3_SET(CURLOPT_SSL_VERIFYHOST, 2L);
  /* No CURLOPT_USERAGENT: the User-Agent goes in the request's header list (dh3_request_new),
     which libcurl sends as it is, where the option made it format the line again for every
     request (a tenth of its work per request: bench/RESULTS.md). */
  if (e->ca_file != NULL) DH3_SET(CURLOPT_CAINFO, e->ca_file);
  if (e->proxy != NULL) DH3_SET(CURLOPT_PROXY, e->proxy);
  DH3_SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  DH3_SET(CURLOPT_HEADERFUNCTION, dh3_request_on_header);
  DH3_SET(CURLOPT_WRITEFUNCTION, dh3_request_on_body);
  return CURLE_OK;
}

/* An idle easy handle from the pool, or a new one with the engine's options; NULL when
   out of memory or an option was refused (*rc then says which error, or CURLE_OK for
   out of memory). */
dh3_easy *dh3_engine_take_easy(dh3_engine *e, CURLcode *rc) {
  dh3_easy *easy;
  *rc = CURLE_OK;
  if (e->pool_len > 0) return e->pool[--e->pool_len];
  easy = calloc(1, sizeof(*easy));
  if (easy == NULL) return NULL;
  easy->curl = curl_easy_init();
  if (easy->curl == NULL || (*rc = dh3_engine_setup_easy(e, easy)) != CURLE_OK) {
    dh3_engine_free_easy(easy);
    return NULL;
  }
  return easy;
}

/* Takes back an easy handle that is not (or no longer) in the multi handle. */
void dh3_engine_give_easy(dh3_engine *e, dh3_easy *easy) {
  if (easy == NULL) return;
  if (!e->closed && e->pool_len < e->pool_cap) {
    /* An idle handle points at nothing of the request's, which may be freed long before
       the handle is taken again: its header list (freed once the transfer is done), its
       callback data. The URL and a POST body stay copied inside the handle until the next
       request replaces them (neither holds the key: it is only in the header list). */
    (void)curl_easy_setopt(easy->curl, CURLOPT_PRIVATE, (void *)NULL);
    (void)curl_easy_setopt(easy->curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    (void)curl_easy_setopt(easy->curl, CURLOPT_HEADERDATA, (void *)NULL);
    (void)curl_easy_setopt(easy->curl, CURLOPT_WRITEDATA, (void *)NULL);
    e->pool[e->pool_len++] = easy;
  } else {
    dh3_engine_free_easy(easy);
  }
}

/* {======================================================================
** Header lists shared by requests
** ======================================================================= */

void dh3_headers_release(dh3_headers *h) {
  if (h != NULL && --h->refs == 0) {
    curl_slist_free_all(h->list);
    free(h);
  }
}

/* Whether h holds exactly lines[0..n-1], in that order. */
static int dh3_headers_equal(const dh3_headers *h, const char *const *lines, int n) {
  const struct curl_slist *l = h->list;
  int i;
  for (i = 0; i < n; i++, l = l->next)
    if (l == NULL || strcmp(l->data, lines[i]) != 0) return 0;
  return l == NULL;
}

/* A list of lines[0..n-1] with a reference for the caller: one of the engine's recent lists if
   equal (no copy at all: the same headers go with every request of a client), else a new one,
   which becomes the most recent. NULL when out of memory. */
dh3_headers *dh3_engine_headers(dh3_engine *e, const char *const *lines, int n) {
  dh3_headers *h;
  int i, k;
  for (k = 0; k < DH3_HEADER_CACHE; k++) {
    h = e->headers[k];
    if (h != NULL && dh3_headers_equal(h, lines, n)) {
      for (; k > 0; k--) e->headers[k] = e->headers[k - 1];
      e->headers[0] = h;
      h->refs++;
      return h;
    }
  }
  h = malloc(sizeof(*h));
  if (h == NULL) return NULL;
  h->list = NULL;
  h->refs = 1;
  for (i = 0; i < n; i++) {
    struct curl_slist *l = curl_slist_append(h->list, lines[i]);
    if (l == NULL) {
      dh3_headers_release(h);
      return NULL;
    }
    h->list = l;
  }
  dh3_headers_release(e->headers[DH3_HEADER_CACHE - 1]); /* the least recent goes */
  for (k = DH3_HEADER_CACHE - 1; k > 0; k--) e->headers[k] = e->headers[k - 1];
  e->headers[0] = h;
  h->refs++; /* the engine's */
  return h;
}
/* }====================================================================== */

void dh3_engine_link_active(dh3_engine *e, dh3_request *req) {
  req->prev = NULL;
  req->next = e->active;
  if (e->active != NULL) e->active->prev = req;
  e->active = req;
  e->n_active++;
}

static void dh3_engine_unlink_active(dh3_engine *e, dh3_request *req) {
  if (req->prev != NULL) {
    req->prev->next = req->next;
  } else {
    e->active = req->next;
  }
  if (req->next != NULL) req->next->prev = req->prev;
  req->prev = req->next = NULL;
  e->n_active--;
}

static void dh3_engine_push_done(dh3_engine *e, dh3_request *req) {
  req->prev = e->done_tail;
  req->next = NULL;
  if (e->done_tail != NULL) {
    e->done_tail->next = req;
  } else {
    e->done_head = req;
  }
  e->done_tail = req;
  e->n_done++;
}

static void dh3_engine_unlink_done(dh3_engine *e, dh3_request *req) {
  if (req->prev != NULL) {
    req->prev->next = req->next;
  } else {
    e->done_head = req->next;
  }
  if (req->next != NULL) {
    req->next->prev = req->prev;
  } else {
    e->done_tail = req->prev;
  }
  req->prev = req->next = NULL;
  e->n_done--;
}

/* Takes an ACTIVE or DONE request out of the engine (C side only: the caller un-anchors
   it). An active transfer leaves the multi handle and its easy handle goes back to the
   pool; the request's own files and buffers are the request's business. */
void dh3_engine_remove(dh3_engine *e, dh3_request *req) {
  if (req->state == DH3_REQ_ACTIVE) {
    dh3_engine_unlink_active(e, req);
    if (req->easy != NULL) {
      curl_multi_remove_handle(e->multi, req->easy->curl);
      dh3_engine_give_easy(e, req->easy);
      req->easy = NULL;
    }
  } else if (req->state == DH3_REQ_DONE) {
    dh3_engine_unlink_done(e, req);
  }
  req->engine = NULL;
}
/* }====================================================================== */

/* {======================================================================
** Closing
** ======================================================================= */

/* The one close behind close, __gc and __close; idempotent. Cancels every transfer
   (temp files unlinked), detaches every request, then frees the pool and the multi. */
static void dh3_engine_close(lua_State *L, int idx, dh3_engine *e) {
  dh3_request *req, *next;
  int i;
  if (e->closed) return;
  e->closed = 1; /* from here on, handles given back are cleaned up, not pooled */
  for (req = e->active; req != NULL; req = next) {
    next = req->next;
    /* libcurl: an easy handle must leave the multi before either is cleaned up */
    if (req->easy != NULL) {
      curl_multi_remove_handle(e->multi, req->easy->curl);
      dh3_engine_free_easy(req->easy);
      req->easy = NULL;
    }
    req->prev = req->next = NULL;
    req->engine = NULL;
    req->anchor = LUA_NOREF; /* the anchor table goes with the engine */
    dh3_request_drop_transfer(req);
    req->state = DH3_REQ_CANCELLED;
  }
  for (req = e->done_head; req != NULL; req = next) {
    next = req->next;
    req->prev = req->next = NULL;
    req->engine = NULL;
    req->anchor = LUA_NOREF;
    req->state = DH3_REQ_CANCELLED; /* finished but never delivered */
  }
  e->active = e->done_head = e->done_tail = NULL;
  e->n_active = e->n_done = 0;

  /* Un-anchor: the requests drop their reference to the anchor table, the engine drops
     the table. Nothing here allocates, so this is safe inside __gc and lua_close. */
  if (lua_getiuservalue(L, idx, DH3_ENGINE_UV_ANCHORS) == LUA_TTABLE) {
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
      if (lua_type(L, -1) == LUA_TUSERDATA) {
        lua_pushnil(L);
        lua_setiuservalue(L, -2, DH3_REQUEST_UV_ANCHORS);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, idx, DH3_ENGINE_UV_ANCHORS);

  for (i = 0; i < e->pool_len; i++) dh3_engine_free_easy(e->pool[i]);
  free(e->pool);
  e->pool = NULL;
  e->pool_len = e->pool_cap = 0;
  if (e->multi != NULL) curl_multi_cleanup(e->multi);
  e->multi = NULL;
  for (i = 0; i < DH3_HEADER_CACHE; i++) {
    dh3_headers_release(e->headers[i]); /* requests still holding one keep it alive */
    e->headers[i] = NULL;
  }
  free(e->user_agent);
  free(e->ua_header);
  free(e->ca_file);
  free(e->proxy);
  e->user_agent = e->ua_header = e->ca_file = e->proxy = NULL;
}

static dh3_engine *dh3_engine_check(lua_State *L, int idx) {
  dh3_engine *e = (dh3_engine *)luaL_checkudata(L, idx, DH3_ENGINE_MT);
  if (e->closed) luaL_error(L, "dh3.engine: attempt to use a closed engine");
  return e;
}

static int dh3_engine_close_l(lua_State *L) {
  dh3_engine *e = (dh3_engine *)luaL_checkudata(L, 1, DH3_ENGINE_MT);
  dh3_engine_close(L, 1, e);
  return 0;
}

static int dh3_engine_tostring(lua_State *L) {
  dh3_engine *e = (dh3_engine *)luaL_checkudata(L, 1, DH3_ENGINE_MT);
  if (e->closed) {
    lua_pushfstring(L, "dh3.engine (%p, closed)", (void *)e);
  } else {
    lua_pushfstring(L, "dh3.engine (%p, %d in flight, %d done)", (void *)e, e->n_active,
                    e->n_done);
  }
  return 1;
}
/* }====================================================================== */

/* {======================================================================
** Creating
** ======================================================================= */
static const char *const dh3_engine_fields[] = {
  "user_agent", "ca_file", "proxy", "max_body", "max_connections", NULL
};

static const char *dh3_engine_opt_string(lua_State *L, const char *name) {
  const char *s;
  size_t len;
  lua_pushstring(L, name);
  lua_rawget(L, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, 1, lua_pushfstring(L, "field '%s' must be a string (got %s)", name,
                                        luaL_typename(L, -1)));
  s = lua_tolstring(L, -1, &len);
  if (strlen(s) != len)
    luaL_argerror(L, 1, lua_pushfstring(L, "field '%s' contains a NUL byte", name));
  lua_pop(L, 1); /* still referenced by the options table, which nobody changes meanwhile */
  return s;
}

static lua_Integer dh3_engine_opt_integer(lua_State *L, const char *name, lua_Integer def,
                                          lua_Integer min, lua_Integer max) {
  lua_Integer v;
  int isint;
  lua_pushstring(L, name);
  lua_rawget(L, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  v = lua_tointegerx(L, -1, &isint);
  if (lua_type(L, -1) != LUA_TNUMBER || !isint || v < min || v > max)
    luaL_argerror(L, 1, lua_pushfstring(L, "field '%s' must be an integer from %I to %I",
                                        name, min, max));
  lua_pop(L, 1);
  return v;
}

/* core.engine{user_agent=, ca_file=, proxy=, max_body=, max_connections=} -> engine */
int dh3_engine_new(lua_State *L) {
  const char *user_agent, *ca_file, *proxy;
  lua_Integer max_body, max_connections;
  dh3_engine *e;
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  dh3_core_check_fields(L, 1, dh3_engine_fields);
  user_agent = dh3_engine_opt_string(L, "user_agent");
  ca_file = dh3_engine_opt_string(L, "ca_file");
  proxy = dh3_engine_opt_string(L, "proxy");
  max_body = dh3_engine_opt_integer(L, "max_body", (lua_Integer)DH3_DEFAULT_MAX_BODY, 1,
                                    DH3_MAX_BODY_LIMIT);
  max_connections = dh3_engine_opt_integer(L, "max_connections", DH3_DEFAULT_MAX_CONNECTIONS,
                                           1, 100000);

  e = (dh3_engine *)lua_newuserdatauv(L, sizeof(*e), 1);
  memset(e, 0, sizeof(*e));
  lua_newtable(L);
  lua_setiuservalue(L, -2, DH3_ENGINE_UV_ANCHORS);
  /* from here the finalizer owns whatever we attach: any error below frees it */
  luaL_setmetatable(L, DH3_ENGINE_MT);
  e->max_body = (size_t)max_body;
  e->max_connections = (long)max_connections;

  if (user_agent != NULL) {
    e->user_agent = dh3_engine_strdup(user_agent);
  } else {
    const char *v = curl_version(); /* "libcurl/7.88.1 OpenSSL/..." */
    const char *sp = strchr(v, ' ');
    size_t n = sp != NULL ? (size_t)(sp - v) : strlen(v);
    e->user_agent = malloc(sizeof("dh3-lua/" DH3_VERSION " ") + n);
    if (e->user_agent != NULL) {
      memcpy(e->user_agent, "dh3-lua/" DH3_VERSION " ", sizeof("dh3-lua/" DH3_VERSION " ") - 1);
      memcpy(e->user_agent + sizeof("dh3-lua/" DH3_VERSION " ") - 1, v, n);
      e->user_agent[sizeof("dh3-lua/" DH3_VERSION " ") - 1 + n] = '\0';
    }
  }
  if (e->user_agent == NULL) return luaL_error(L, "dh3.engine: out of memory");
  e->ua_header = malloc(sizeof("User-Agent: ") + strlen(e->user_agent));
  if (e->ua_header == NULL) return luaL_error(L, "dh3.engine: out of memory");
  memcpy(e->ua_header, "User-Agent: ", sizeof("User-Agent: ") - 1);
  strcpy(e->ua_header + sizeof("User-Agent: ") - 1, e->user_agent);
  if (ca_file != NULL && (e->ca_file = dh3_engine_strdup(ca_file)) == NULL)
    return luaL_error(L, "dh3.engine: out of memory");
  if (proxy != NULL && (e->proxy = dh3_engine_strdup(proxy)) == NULL)
    return luaL_error(L, "dh3.engine: out of memory");

  e->pool_cap = max_connections < DH3_MAX_POOL ? (int)max_connections : DH3_MAX_POOL;
  e->pool = calloc((size_t)e->pool_cap, sizeof(dh3_easy *));
  if (e->pool == NULL) return luaL_error(L, "dh3.engine: out of memory");
  e->multi = curl_multi_init();
  if (e->multi == NULL) return luaL_error(L, "dh3.engine: curl_multi_init failed");
  /* HTTP/2 multiplexing (the default since 7.62, said out loud) and the size of the
     connection cache that keep-alive reuse draws from */
  curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, e->max_connections);
  return 1;
}
/* }====================================================================== */

/* {======================================================================
** Methods
** ======================================================================= */

/* engine:request{...} -> request | nil, errmsg (request.c does the work) */
static int dh3_engine_request(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  return dh3_request_new(L, e);
}

/* Moves every finished transfer from the multi handle to the done queue. */
static int dh3_engine_collect(dh3_engine *e) {
  CURLMsg *msg;
  int left, moved = 0;
  while ((msg = curl_multi_info_read(e->multi, &left)) != NULL) {
    CURL *curl;
    dh3_easy *easy;
    CURLcode code;
    void *priv = NULL;
    dh3_request *req;
    if (msg->msg != CURLMSG_DONE) continue;
    /* copy out first: msg points into the easy handle and dies with remove_handle */
    curl = msg->easy_handle;
    code = msg->data.result;
    curl_easy_getinfo(curl, CURLINFO_PRIVATE, (char **)&priv);
    req = (dh3_request *)priv;
    if (req == NULL || req->easy == NULL || req->easy->curl != curl ||
        req->state != DH3_REQ_ACTIVE) {
      /* not ours: cannot happen, but never touch memory we do not know */
      curl_multi_remove_handle(e->multi, curl);
      continue;
    }
    easy = req->easy;
    dh3_engine_unlink_active(e, req);
    curl_multi_remove_handle(e->multi, curl);
    dh3_request_complete(req, code); /* reads CURLINFO_* and the error text from the handle */
    req->easy = NULL;
    dh3_engine_give_easy(e, easy);
    req->state = DH3_REQ_DONE;
    dh3_engine_push_done(e, req);
    moved++;
  }
  return moved;
}

/*
** engine:perform([timeout [, fds [, ready]]]) -> number of transfers still in flight, fds_ready
** Performs, moves finished transfers to the done queue, and when nothing finished and
** nothing waits for delivery, waits in curl_multi_poll and performs again, until the
** deadline. Never blocks longer than timeout (0 = never waits). With no transfers at
** all, curl_multi_poll simply sleeps: the Lua layer's sleep. Allocates nothing.
** fds, optional: an array of file descriptors of the caller's own (a webhook receiver's
** sockets) to wait on as well, for reading: the wait ends when one is ready (fds_ready is
** then true), so one wait serves libcurl's transfers and the caller's server together.
** poll(), not select(): any descriptor number works.
** ready, optional (with fds): a table that receives the descriptors of fds found readable
** (a peer that closed reads as readable) as ready[1..k], ready[k+1] = nil, the entries after
** that cleared. When perform did not wait (timeout 0, or transfers finished), it first takes
** one look that waits for nothing, so the answer is always fresh. Filling it allocates
** nothing once the table has held that many entries.
*/
#define DH3_MAX_EXTRA_FDS 256

/* Lists the descriptors of extra[] that poll found ready in the table at stack index idx. */
static void dh3_engine_report_ready(lua_State *L, int idx, const struct curl_waitfd *extra,
                                    unsigned int n_extra) {
  lua_Integer k = 0;
  unsigned int i;
  for (i = 0; i < n_extra; i++) {
    if (extra[i].revents == 0) continue;
    lua_pushinteger(L, (lua_Integer)extra[i].fd);
    lua_rawseti(L, idx, ++k);
  }
  /* clear what an earlier call left past the new end */
  for (;;) {
    int present = lua_rawgeti(L, idx, k + 1) != LUA_TNIL;
    lua_pop(L, 1);
    if (!present) break;
    lua_pushnil(L);
    lua_rawseti(L, idx, ++k);
  }
}

static int dh3_engine_perform(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  lua_Number timeout = luaL_optnumber(L, 2, 0.0);
  struct curl_waitfd extra[DH3_MAX_EXTRA_FDS];
  unsigned int n_extra = 0;
  int fds_ready = 0;
  int want_ready = !lua_isnoneornil(L, 4);
  int looked = 0; /* extra[].revents describe the descriptors as they are now */
  double deadline;
  luaL_argcheck(L, timeout == timeout, 2, "timeout is NaN");
  if (want_ready) {
    luaL_checktype(L, 3, LUA_TTABLE);
    luaL_checktype(L, 4, LUA_TTABLE);
  }
  if (!lua_isnoneornil(L, 3)) {
    lua_Integer i, n;
    luaL_checktype(L, 3, LUA_TTABLE);
    n = (lua_Integer)lua_rawlen(L, 3);
    luaL_argcheck(L, n <= DH3_MAX_EXTRA_FDS, 3, "too many file descriptors");
    for (i = 1; i <= n; i++) {
      int isnum;
      lua_Integer fd;
      lua_rawgeti(L, 3, i);
      fd = lua_tointegerx(L, -1, &isnum);
      lua_pop(L, 1);
      luaL_argcheck(L, isnum && fd >= 0 && fd <= INT_MAX, 3, "file descriptors must be integers >= 0");
      extra[n_extra].fd = (curl_socket_t)fd;
      extra[n_extra].events = CURL_WAIT_POLLIN;
      extra[n_extra].revents = 0;
      n_extra++;
    }
  }
  if (timeout < 0) timeout = 0;
  deadline = dh3_core_now() + (double)timeout;
  for (;;) {
    int running = 0;
    double remaining;
    int ms;
    unsigned int k;
    CURLMcode mc = curl_multi_perform(e->multi, &running);
    if (mc != CURLM_OK)
      return luaL_error(L, "dh3.engine: curl_multi_perform: %s", curl_multi_strerror(mc));
    if (dh3_engine_collect(e) > 0 || e->n_done > 0 || timeout <= 0 || fds_ready) break;
    remaining = deadline - dh3_core_now();
    if (remaining <= 0) break;
    /* rounded down, so the wait never overshoots; the sub-millisecond rest spins */
    ms = remaining >= (double)(INT_MAX / 1000) ? INT_MAX : (int)(remaining * 1000.0);
    mc = curl_multi_poll(e->multi, n_extra > 0 ? extra : NULL, n_extra, ms, NULL);
    if (mc != CURLM_OK)
      return luaL_error(L, "dh3.engine: curl_multi_poll: %s", curl_multi_strerror(mc));
    looked = 1;
    for (k = 0; k < n_extra; k++)
      if (extra[k].revents != 0) fds_ready = 1;
  }
  if (want_ready) {
    if (!looked && n_extra > 0) {
      unsigned int k;
      CURLMcode mc = curl_multi_poll(e->multi, extra, n_extra, 0, NULL);
      if (mc != CURLM_OK)
        return luaL_error(L, "dh3.engine: curl_multi_poll: %s", curl_multi_strerror(mc));
      for (k = 0; k < n_extra; k++)
        if (extra[k].revents != 0) fds_ready = 1;
    }
    dh3_engine_report_ready(L, 4, extra, n_extra);
  }
  lua_pushinteger(L, e->n_active);
  lua_pushboolean(L, fds_ready);
  return 2;
}

/* engine:next_done() -> result, context | nil when the done queue is empty */
static int dh3_engine_next_done(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  dh3_request *req = e->done_head;
  int anchors, ud;
  if (req == NULL) {
    lua_pushnil(L);
    return 1;
  }
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, DH3_ENGINE_UV_ANCHORS);
  anchors = lua_gettop(L);
  /* the request userdata (none only after an OOM while anchoring it in request) */
  if (req->anchor > 0) {
    lua_rawgeti(L, anchors, req->anchor);
  } else {
    lua_pushnil(L);
  }
  ud = lua_gettop(L);
  /* build everything first: if Lua runs out of memory here, the request stays queued */
  dh3_request_push_result(L, req, ud);
  if (lua_isnil(L, ud)) {
    lua_pushnil(L);
  } else {
    lua_getiuservalue(L, ud, DH3_REQUEST_UV_CONTEXT);
  }
  /* now deliver: off the queue, un-anchored, ours no more */
  dh3_engine_unlink_done(e, req);
  dh3_request_delivered(req);
  if (req->anchor > 0) {
    luaL_unref(L, anchors, req->anchor); /* allocates nothing: its slot exists */
    req->anchor = LUA_NOREF;
  }
  if (!lua_isnil(L, ud)) {
    lua_pushnil(L);
    lua_setiuservalue(L, ud, DH3_REQUEST_UV_ANCHORS);
  }
  return 2;
}

/* engine:pending() -> in_flight, done_waiting */
static int dh3_engine_pending(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  lua_pushinteger(L, e->n_active);
  lua_pushinteger(L, e->n_done);
  return 2;
}
/* }====================================================================== */

static const luaL_Reg dh3_engine_methods[] = {
  {"request", dh3_engine_request},
  {"perform", dh3_engine_perform},
  {"next_done", dh3_engine_next_done},
  {"pending", dh3_engine_pending},
  {"close", dh3_engine_close_l},
  {NULL, NULL}
};

static const luaL_Reg dh3_engine_meta[] = {
  {"__gc", dh3_engine_close_l},
  {"__close", dh3_engine_close_l},
  {"__tostring", dh3_engine_tostring},
  {NULL, NULL}
};

/* Creates (or, on a second luaopen in the same state, refreshes) the metatable. */
void dh3_engine_open(lua_State *L) {
  luaL_newmetatable(L, DH3_ENGINE_MT);
  luaL_setfuncs(L, dh3_engine_meta, 0);
  luaL_newlib(L, dh3_engine_methods);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, DH3_ENGINE_MT);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}
