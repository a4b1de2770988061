/*
** engine.c: "dh3.engine", one libcurl multi handle, and everything about a request being in
** flight: adding it, anchoring it, every change of its state, cancelling and releasing it,
** the list of ACTIVE requests and the FIFO queue of DONE ones. The methods of "dh3.request"
** are here too, since each of them depends on that state; what they report of the transfer
** itself comes from request.c, which builds and finishes transfers and never touches
** req->flight. The easy handles and header lists come from the engine's pool (pool.c).
**
** A request's life: NEW (engine:request, while request.c builds its transfer), ACTIVE (in
** the multi handle), DONE (finished, queued), DELIVERED (handed out by next_done), or
** CANCELLED (request:cancel, its close, or its engine's close, before delivery). Only this
** file writes req->flight.state.
**
** Anchoring: the engine's user value 1 is a table holding every request userdata from
** engine:request until next_done delivers it (or it is cancelled), so a request the caller
** dropped still completes and is delivered. A request is held under its luaL_ref (kept in
** req->flight.anchor): the references are small integers reused through luaL_ref's free
** list, so the table is an array that stops growing at the most requests ever in flight.
** (Keyed by request, the table had to rebuild its hash part on nearly every request once
** full: bench/RESULTS.md.)
** The request holds that same table as its user value 2 (so cancel can un-anchor it)
** but never the engine itself: an engine the caller drops is collected, and its __gc
** cancels whatever was in flight.
**
** lua_close and the collector may finalize an engine and its requests in any order, but
** no memory is freed before all of their finalizers ran. So: a request finalized while
** still on an engine's list removes itself (req->flight.engine is valid: an engine that
** closes first clears it on every request it holds).
**
** No Lua runs inside libcurl: perform() calls curl_multi_perform and
** curl_multi_info_read, and only C state changes until it returns. In socket-action mode
** (for a host's event loop, see that section) libcurl's socket and timer callbacks likewise
** only record in C memory, and perform() polls what they recorded.
*/
#include "dh3.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DH3_ENGINE_UV_ANCHORS 1 /* {[luaL_ref] = request userdata} */

/* A descriptor libcurl wants watched, as its socket callback last said. */
typedef struct dh3_watch {
  curl_socket_t fd;
  int events;  /* DH3_WATCH_READ | DH3_WATCH_WRITE; 0: removed (dropped once reported) */
  int changed; /* not yet reported by engine:watched() */
} dh3_watch;
#define DH3_WATCH_READ 1
#define DH3_WATCH_WRITE 2

struct dh3_engine {
  CURLM *multi;
  dh3_pool pool; /* idle easy handles and the shared header lists */
  dh3_request *active; /* doubly linked list of ACTIVE requests */
  dh3_request *done_head, *done_tail; /* FIFO of DONE requests (next pointers) */
  int n_active, n_done;
  char *ca_file, *proxy; /* owned, malloc'd (the pool borrows them) */
  char *ua_header;       /* "User-Agent: " and the user_agent option, or NULL: none */
  size_t max_body;
  long max_connections;
  int closed;

  /* socket-action mode (see "Socket-action mode" below): what libcurl's socket and timer
     callbacks recorded, in C memory only */
  int socket_mode;
  dh3_watch *watch;      /* one entry per descriptor libcurl told us of */
  int n_watch, cap_watch;
  int n_changed;         /* entries whose `changed` is set: what watched() reports */
  double timer_at;       /* when libcurl wants a timeout action (dh3_util_now's clock); <0: never */
  unsigned long timer_calls; /* times the timer callback ran */
  struct pollfd *pfds;   /* perform's poll(2) set in this mode, grown as needed */
  int cap_pfds;
  int sock_oom;          /* a callback could not record: reported by the next call */
};

static const char *const dh3_engine_state_names[] = {
  "new", "active", "done", "delivered", "cancelled"
};

static char *dh3_engine_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p != NULL) memcpy(p, s, n);
  return p;
}

/* {======================================================================
** The active list and the done queue
** ======================================================================= */

static void dh3_engine_link_active(dh3_engine *e, dh3_request *req) {
  req->flight.prev = NULL;
  req->flight.next = e->active;
  if (e->active != NULL) e->active->flight.prev = req;
  e->active = req;
  e->n_active++;
}

static void dh3_engine_unlink_active(dh3_engine *e, dh3_request *req) {
  dh3_flight *f = &req->flight;
  if (f->prev != NULL) {
    f->prev->flight.next = f->next;
  } else {
    e->active = f->next;
  }
  if (f->next != NULL) f->next->flight.prev = f->prev;
  f->prev = f->next = NULL;
  e->n_active--;
}

static void dh3_engine_push_done(dh3_engine *e, dh3_request *req) {
  req->flight.prev = e->done_tail;
  req->flight.next = NULL;
  if (e->done_tail != NULL) {
    e->done_tail->flight.next = req;
  } else {
    e->done_head = req;
  }
  e->done_tail = req;
  e->n_done++;
}

static void dh3_engine_unlink_done(dh3_engine *e, dh3_request *req) {
  dh3_flight *f = &req->flight;
  if (f->prev != NULL) {
    f->prev->flight.next = f->next;
  } else {
    e->done_head = f->next;
  }
  if (f->next != NULL) {
    f->next->flight.prev = f->prev;
  } else {
    e->done_tail = f->prev;
  }
  f->prev = f->next = NULL;
  e->n_done--;
}
/* }====================================================================== */

/* {======================================================================
** Cancelling and releasing a request
** ======================================================================= */

/* Cancels an ACTIVE or DONE request (its userdata at ud): out of its engine's list or queue
   and its multi handle, transfer dropped (the easy handle back to the pool, the temp file
   removed), un-anchored. Returns whether there was anything to cancel. */
static int dh3_engine_cancel_request(lua_State *L, int ud, dh3_request *req) {
  dh3_flight *f = &req->flight;
  dh3_engine *e = f->engine;
  if (f->state != DH3_REQ_ACTIVE && f->state != DH3_REQ_DONE) return 0;
  if (e != NULL) {
    if (f->state == DH3_REQ_ACTIVE) {
      dh3_engine_unlink_active(e, req);
      if (req->easy != NULL) curl_multi_remove_handle(e->multi, req->easy->curl);
    } else {
      dh3_engine_unlink_done(e, req);
    }
    f->engine = NULL;
  }
  dh3_request_drop_transfer(req, e != NULL ? &e->pool : NULL);
  f->state = DH3_REQ_CANCELLED;
  /* luaL_unref sets existing slots only, so it allocates nothing: safe in __gc and
     lua_close */
  if (lua_getiuservalue(L, ud, DH3_REQUEST_UV_ANCHORS) == LUA_TTABLE && f->anchor > 0)
    luaL_unref(L, lua_gettop(L), f->anchor);
  f->anchor = LUA_NOREF;
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, ud, DH3_REQUEST_UV_ANCHORS);
  return 1;
}

/* The one close of a request, behind its __gc and __close; idempotent. */
static void dh3_engine_close_request(lua_State *L, int ud, dh3_request *req) {
  if (req->closed) return;
  dh3_engine_cancel_request(L, ud, req);
  dh3_request_free(req);
  req->closed = 1;
}
/* }====================================================================== */

/* {======================================================================
** Closing
** ======================================================================= */

/* The one close behind close, __gc and __close; idempotent. Cancels every transfer
   (temp files unlinked), detaches every request, then frees the pool and the multi. */
static void dh3_engine_close(lua_State *L, int idx, dh3_engine *e) {
  dh3_request *req, *next;
  if (e->closed) return;
  e->closed = 1;
  for (req = e->active; req != NULL; req = next) {
    next = req->flight.next;
    /* libcurl: an easy handle must leave the multi before either is cleaned up */
    if (req->easy != NULL) curl_multi_remove_handle(e->multi, req->easy->curl);
    dh3_request_drop_transfer(req, NULL); /* its handle is cleaned up, not pooled */
    req->flight.prev = req->flight.next = NULL;
    req->flight.engine = NULL;
    req->flight.anchor = LUA_NOREF; /* the anchor table goes with the engine */
    req->flight.state = DH3_REQ_CANCELLED;
  }
  for (req = e->done_head; req != NULL; req = next) {
    next = req->flight.next;
    req->flight.prev = req->flight.next = NULL;
    req->flight.engine = NULL;
    req->flight.anchor = LUA_NOREF;
    req->flight.state = DH3_REQ_CANCELLED; /* finished but never delivered */
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

  dh3_pool_close(&e->pool); /* requests still holding a header list keep it alive */
  if (e->multi != NULL) curl_multi_cleanup(e->multi);
  e->multi = NULL;
  /* after the cleanup: libcurl's socket callback may still run inside it */
  free(e->watch);
  free(e->pfds);
  e->watch = NULL;
  e->pfds = NULL;
  e->n_watch = e->cap_watch = e->n_changed = e->cap_pfds = 0;
  free(e->ua_header);
  free(e->ca_file);
  free(e->proxy);
  e->ua_header = e->ca_file = e->proxy = NULL;
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
  "user_agent", "ca_file", "proxy", "max_body", "max_connections", "socket_action", NULL
};

static void dh3_engine_use_sockets(dh3_engine *e);

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
  if (lua_type(L, -1) != LUA_TNUMBER || !isint || v < min || v > max) {
    char lo[DH3_INTEGER_BUFSIZE], hi[DH3_INTEGER_BUFSIZE];
    luaL_argerror(L, 1, lua_pushfstring(L, "field '%s' must be an integer from %s to %s", name,
                                        dh3_compat_fmtint(lo, min), dh3_compat_fmtint(hi, max)));
  }
  lua_pop(L, 1);
  return v;
}

/* core.engine{user_agent=, ca_file=, proxy=, max_body=, max_connections=, socket_action=}
   -> engine. Without user_agent, requests send no User-Agent (the Lua layer always gives
   one). socket_action = true: the engine runs in socket-action mode from the start. */
int dh3_engine_new(lua_State *L) {
  const char *user_agent, *ca_file, *proxy;
  lua_Integer max_body, max_connections;
  int socket_action;
  dh3_engine *e;
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  dh3_util_check_fields(L, 1, dh3_engine_fields);
  user_agent = dh3_engine_opt_string(L, "user_agent");
  ca_file = dh3_engine_opt_string(L, "ca_file");
  proxy = dh3_engine_opt_string(L, "proxy");
  max_body = dh3_engine_opt_integer(L, "max_body", (lua_Integer)DH3_DEFAULT_MAX_BODY, 1,
                                    DH3_MAX_BODY_LIMIT);
  max_connections = dh3_engine_opt_integer(L, "max_connections", DH3_DEFAULT_MAX_CONNECTIONS,
                                           1, 100000);
  lua_pushstring(L, "socket_action");
  lua_rawget(L, 1);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
    luaL_argerror(L, 1, "field 'socket_action' must be a boolean");
  socket_action = lua_toboolean(L, -1);
  lua_pop(L, 1);

  e = (dh3_engine *)lua_newuserdatauv(L, sizeof(*e), 1);
  memset(e, 0, sizeof(*e));
  e->timer_at = -1.0;
  lua_newtable(L);
  lua_setiuservalue(L, -2, DH3_ENGINE_UV_ANCHORS);
  /* from here the finalizer owns whatever we attach: any error below frees it */
  luaL_setmetatable(L, DH3_ENGINE_MT);
  e->max_body = (size_t)max_body;
  e->max_connections = (long)max_connections;

  if (user_agent != NULL) {
    e->ua_header = malloc(sizeof("User-Agent: ") + strlen(user_agent));
    if (e->ua_header == NULL) return luaL_error(L, "dh3.engine: out of memory");
    memcpy(e->ua_header, "User-Agent: ", sizeof("User-Agent: ") - 1);
    strcpy(e->ua_header + sizeof("User-Agent: ") - 1, user_agent);
  }
  if (ca_file != NULL && (e->ca_file = dh3_engine_strdup(ca_file)) == NULL)
    return luaL_error(L, "dh3.engine: out of memory");
  if (proxy != NULL && (e->proxy = dh3_engine_strdup(proxy)) == NULL)
    return luaL_error(L, "dh3.engine: out of memory");

  if (!dh3_pool_init(&e->pool, max_connections < DH3_MAX_POOL ? (int)max_connections
                                                               : DH3_MAX_POOL,
                     e->ca_file, e->proxy))
    return luaL_error(L, "dh3.engine: out of memory");
  e->multi = curl_multi_init();
  if (e->multi == NULL) return luaL_error(L, "dh3.engine: curl_multi_init failed");
  /* HTTP/2 multiplexing (the default since 7.62, said out loud) and the size of the
     connection cache that keep-alive reuse draws from */
  curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, e->max_connections);
  if (socket_action) dh3_engine_use_sockets(e);
  return 1;
}
/* }====================================================================== */

/* {======================================================================
** Methods
** ======================================================================= */

/* engine:request{...} -> request | nil, errmsg [, kind]. request.c builds the transfer;
   here it is added, anchored and made ACTIVE. */
static int dh3_engine_request(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  dh3_request *req;
  CURLMcode mc;
  int ud, n;
  n = dh3_request_new(L, &e->pool, e->max_body, e->ua_header, &req);
  req->flight.anchor = LUA_NOREF;
  if (n > 0) {
    req->flight.state = DH3_REQ_CANCELLED;
    return n;
  }
  ud = lua_gettop(L);
  mc = curl_multi_add_handle(e->multi, req->easy->curl);
  if (mc != CURLM_OK) {
    dh3_request_drop_transfer(req, &e->pool);
    req->flight.state = DH3_REQ_CANCELLED;
    lua_pushnil(L);
    lua_pushfstring(L, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    return 2;
  }
  req->flight.engine = e;
  req->flight.state = DH3_REQ_ACTIVE;
  dh3_engine_link_active(e, req);

  /* anchor until delivered: the userdata goes into the engine's anchor table under a
     luaL_ref; the request keeps the anchor table (not the engine) so that cancel can
     un-anchor it */
  lua_getiuservalue(L, 1, DH3_ENGINE_UV_ANCHORS);
  lua_pushvalue(L, ud);
  req->flight.anchor = luaL_ref(L, -2);
  lua_setiuservalue(L, ud, DH3_REQUEST_UV_ANCHORS);
  lua_settop(L, ud);
  return 1;
}

/* Moves every finished transfer from the multi handle to the done queue. */
static int dh3_engine_collect(dh3_engine *e) {
  CURLMsg *msg;
  int left, moved = 0;
  while ((msg = curl_multi_info_read(e->multi, &left)) != NULL) {
    CURL *curl;
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
        req->flight.state != DH3_REQ_ACTIVE) {
      /* not ours: cannot happen, but never touch memory we do not know */
      curl_multi_remove_handle(e->multi, curl);
      continue;
    }
    dh3_engine_unlink_active(e, req);
    curl_multi_remove_handle(e->multi, curl);
    dh3_request_complete(req, code); /* reads CURLINFO_* and the error text from the handle */
    dh3_request_drop_transfer(req, &e->pool); /* the handle back to the pool */
    req->flight.state = DH3_REQ_DONE;
    dh3_engine_push_done(e, req);
    moved++;
  }
  return moved;
}

/* {======================================================================
** Socket-action mode
**
** For a host with an event loop of its own (libuv, an engine's reactor): libcurl's
** multi-socket interface. Its socket and timer callbacks below only write C memory: which
** descriptors want which events (e->watch) and when libcurl wants a timeout action
** (e->timer_at). No Lua runs in them. The host reads that through engine:watched() and
** engine:timeout(), watches the descriptors itself, and calls engine:socket_action(fd,
** events) when one is ready and engine:socket_action() when the timer is due; both run
** curl_multi_socket_action and move finished transfers to the done queue as perform does.
**
** In this mode curl_multi_perform is never called (the two interfaces are not mixed on one
** multi handle). engine:perform keeps its meaning, so update(), run() and every blocking
** call work unchanged: it polls the recorded descriptors (and the caller's own) with
** poll(2), for at most its timeout and never past libcurl's timer, and acts on what is
** ready. A host that drives the engine itself never has to call it, but may.
** ======================================================================= */

static dh3_watch *dh3_engine_find_watch(dh3_engine *e, curl_socket_t fd) {
  int i;
  for (i = 0; i < e->n_watch; i++)
    if (e->watch[i].fd == fd) return &e->watch[i];
  return NULL;
}

/* CURLMOPT_SOCKETFUNCTION: records, nothing else (libcurl: do not call it back from here) */
static int dh3_engine_on_socket(CURL *easy, curl_socket_t fd, int what, void *clientp,
                                void *socketp) {
  dh3_engine *e = (dh3_engine *)clientp;
  dh3_watch *w = dh3_engine_find_watch(e, fd);
  int events = 0;
  (void)easy;
  (void)socketp;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= DH3_WATCH_READ;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= DH3_WATCH_WRITE;
  if (w == NULL) {
    if (events == 0) return 0; /* removing what we never recorded */
    if (e->n_watch == e->cap_watch) {
      int cap = e->cap_watch > 0 ? e->cap_watch * 2 : 8;
      dh3_watch *grown = (dh3_watch *)realloc(e->watch, (size_t)cap * sizeof(*grown));
      if (grown == NULL) {
        e->sock_oom = 1;
        return -1; /* libcurl fails the transfers of this multi handle */
      }
      e->watch = grown;
      e->cap_watch = cap;
    }
    w = &e->watch[e->n_watch++];
    w->fd = fd;
    w->events = -1; /* differs from any events: counted as a change below */
    w->changed = 0;
  }
  if (w->events != events) {
    w->events = events;
    if (!w->changed) {
      w->changed = 1;
      e->n_changed++;
    }
  }
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: records the deadline (-1: no timer) */
static int dh3_engine_on_timer(CURLM *multi, long timeout_ms, void *clientp) {
  dh3_engine *e = (dh3_engine *)clientp;
  (void)multi;
  e->timer_calls++;
  e->timer_at = timeout_ms < 0 ? -1.0 : dh3_util_now() + (double)timeout_ms / 1000.0;
  return 0;
}

static void dh3_engine_use_sockets(dh3_engine *e) {
  if (e->socket_mode) return;
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, dh3_engine_on_socket);
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, (void *)e);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, dh3_engine_on_timer);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, (void *)e);
  e->socket_mode = 1;
  e->timer_at = -1.0;
}

/* One curl_multi_socket_action (fd CURL_SOCKET_TIMEOUT: the timer's), then the finished
   transfers to the done queue. */
static CURLMcode dh3_engine_act(dh3_engine *e, curl_socket_t fd, int ev_bitmask) {
  int running = 0;
  CURLMcode mc;
  if (fd == CURL_SOCKET_TIMEOUT) {
    unsigned long calls = e->timer_calls;
    mc = curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (e->timer_calls == calls && mc == CURLM_OK) {
      /* libcurl calls the timer callback only when its next expiry changes: had it not, the
         expired deadline would stay and be fired again and again. Ask it instead. */
      long ms = -1;
      if (curl_multi_timeout(e->multi, &ms) == CURLM_OK)
        e->timer_at = ms < 0 ? -1.0 : dh3_util_now() + (double)ms / 1000.0;
    }
  } else {
    mc = curl_multi_socket_action(e->multi, fd, ev_bitmask, &running);
  }
  dh3_engine_collect(e);
  return mc;
}

/* Waits at most ms (never past libcurl's timer) for the recorded descriptors and the
   caller's extra[] with poll(2), then acts on every ready descriptor and on the timer if it
   is due. extra[].revents say which of the caller's are ready. Returns CURLM_OK, or the
   first failure (CURLM_OUT_OF_MEMORY when the poll set cannot grow). */
static CURLMcode dh3_engine_sock_step(dh3_engine *e, int ms, struct curl_waitfd *extra,
                                      unsigned int n_extra) {
  int n = 0, i, rc;
  unsigned int k;
  CURLMcode mc = CURLM_OK;
  int need = e->n_watch + (int)n_extra;
  if (need > e->cap_pfds) {
    struct pollfd *grown = (struct pollfd *)realloc(e->pfds, (size_t)need * sizeof(*grown));
    if (grown == NULL) return CURLM_OUT_OF_MEMORY;
    e->pfds = grown;
    e->cap_pfds = need;
  }
  for (i = 0; i < e->n_watch; i++) {
    short events = 0;
    if (e->watch[i].events <= 0) continue;
    if (e->watch[i].events & DH3_WATCH_READ) events |= POLLIN;
    if (e->watch[i].events & DH3_WATCH_WRITE) events |= POLLOUT;
    e->pfds[n].fd = (int)e->watch[i].fd;
    e->pfds[n].events = events;
    e->pfds[n].revents = 0;
    n++;
  }
  for (k = 0; k < n_extra; k++) {
    e->pfds[n + (int)k].fd = (int)extra[k].fd;
    e->pfds[n + (int)k].events = POLLIN;
    e->pfds[n + (int)k].revents = 0;
    extra[k].revents = 0;
  }
  if (e->timer_at >= 0) {
    double until = e->timer_at - dh3_util_now();
    if (until <= 0) {
      ms = 0;
    } else if (until * 1000.0 < (double)ms) {
      ms = (int)(until * 1000.0) + 1; /* rounded up: woken early, the timer is not yet due */
    }
  }
  if (ms < 0) ms = 0;
  rc = poll(n + (int)n_extra > 0 ? e->pfds : NULL, (nfds_t)(n + (int)n_extra), ms);
  if (rc < 0 && errno != EINTR) return CURLM_INTERNAL_ERROR;
  if (rc > 0) {
    for (k = 0; k < n_extra; k++)
      if (e->pfds[n + (int)k].revents != 0) extra[k].revents = CURL_WAIT_POLLIN;
    /* acting may change e->watch; e->pfds is ours and stays as polled */
    for (i = 0; i < n; i++) {
      short re = e->pfds[i].revents;
      int ev = 0;
      CURLMcode m;
      if (re == 0) continue;
      if (re & (POLLIN | POLLHUP)) ev |= CURL_CSELECT_IN;
      if (re & POLLOUT) ev |= CURL_CSELECT_OUT;
      if (re & (POLLERR | POLLNVAL)) ev |= CURL_CSELECT_ERR;
      m = dh3_engine_act(e, (curl_socket_t)e->pfds[i].fd, ev);
      if (m != CURLM_OK && mc == CURLM_OK) mc = m;
    }
  }
  if (e->timer_at >= 0 && e->timer_at <= dh3_util_now()) {
    CURLMcode m = dh3_engine_act(e, CURL_SOCKET_TIMEOUT, 0);
    if (m != CURLM_OK && mc == CURLM_OK) mc = m;
  }
  return mc;
}

static void dh3_engine_check_sockets(lua_State *L, dh3_engine *e) {
  if (!e->socket_mode)
    luaL_error(L, "dh3.engine: not in socket-action mode (core.engine{socket_action = true} "
                  "or engine:use_socket_action())");
  if (e->sock_oom) {
    e->sock_oom = 0;
    luaL_error(L, "dh3.engine: out of memory recording a socket");
  }
}

/* engine:use_socket_action() switches to socket-action mode (for good). Only while nothing
   is in flight: libcurl reports a socket when its wants change, so the sockets of transfers
   started before would never be reported. */
static int dh3_engine_use_socket_action(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  if (!e->socket_mode && e->n_active > 0)
    return luaL_error(L, "dh3.engine: use_socket_action: transfers are in flight");
  dh3_engine_use_sockets(e);
  return 0;
}

/* engine:socket_mode() -> whether the engine is in socket-action mode */
static int dh3_engine_socket_mode(lua_State *L) {
  lua_pushboolean(L, dh3_engine_check(L, 1)->socket_mode);
  return 1;
}

static const char *const dh3_engine_event_names[] = { "", "r", "w", "rw" };

/*
** engine:watched(t [, all]) -> n
** The descriptors whose wanted events changed since the last call (all of them with `all`),
** written into t as t[1], t[2] = fd, events ... t[2n-1], t[2n], then t[2n+1] = nil. events is
** "r", "w" or "rw" (as luv's poll handles take them) or "" when the descriptor is no longer to
** be watched. Allocates nothing when nothing changed (t is then left as it is), and nothing
** once t has held that many entries.
*/
static int dh3_engine_watched(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  int all = lua_toboolean(L, 3);
  lua_Integer k = 0;
  int i, j;
  luaL_checktype(L, 2, LUA_TTABLE);
  dh3_engine_check_sockets(L, e);
  if (e->n_changed == 0 && !all) {
    lua_pushinteger(L, 0);
    return 1;
  }
  for (i = 0; i < e->n_watch; i++) {
    dh3_watch *w = &e->watch[i];
    if (!w->changed && !all) continue;
    if (!w->changed && w->events <= 0) continue;
    lua_pushinteger(L, (lua_Integer)w->fd);
    lua_rawseti(L, 2, ++k);
    lua_pushstring(L, dh3_engine_event_names[w->events > 0 ? w->events : 0]);
    lua_rawseti(L, 2, ++k);
  }
  lua_pushnil(L);
  lua_rawseti(L, 2, k + 1);
  /* reported: clear the marks, drop the removed */
  for (i = j = 0; i < e->n_watch; i++) {
    e->watch[i].changed = 0;
    if (e->watch[i].events > 0) e->watch[j++] = e->watch[i];
  }
  e->n_watch = j;
  e->n_changed = 0;
  lua_pushinteger(L, k / 2);
  return 1;
}

/* engine:timeout() -> seconds until libcurl wants engine:socket_action() (0: now), or nil */
static int dh3_engine_timeout(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  double left;
  dh3_engine_check_sockets(L, e);
  if (e->timer_at < 0) {
    lua_pushnil(L);
    return 1;
  }
  left = e->timer_at - dh3_util_now();
  lua_pushnumber(L, left > 0 ? (lua_Number)left : 0);
  return 1;
}

/*
** engine:socket_action(fd, events) -> in_flight, done_waiting
** engine:socket_action() -> in_flight, done_waiting
** Tells libcurl that fd is ready (events: a string of "r", "w", "e" for an error, as luv's
** poll callback gives them; "" or nil: look at it anyway), or, with no fd, that its timer
** fired. Finished transfers go to the done queue (engine:next_done hands them out).
*/
static int dh3_engine_socket_action_l(lua_State *L) {
  dh3_engine *e = dh3_engine_check(L, 1);
  CURLMcode mc;
  dh3_engine_check_sockets(L, e);
  if (lua_isnoneornil(L, 2)) {
    mc = dh3_engine_act(e, CURL_SOCKET_TIMEOUT, 0);
  } else {
    lua_Integer fd = luaL_checkinteger(L, 2);
    const char *ev = luaL_optstring(L, 3, "");
    int mask = 0;
    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, 2, "not a file descriptor");
    for (; *ev != '\0'; ev++) {
      if (*ev == 'r') {
        mask |= CURL_CSELECT_IN;
      } else if (*ev == 'w') {
        mask |= CURL_CSELECT_OUT;
      } else if (*ev == 'e') {
        mask |= CURL_CSELECT_ERR;
      } else {
        return luaL_argerror(L, 3, "events must be made of 'r', 'w' and 'e'");
      }
    }
    mc = dh3_engine_act(e, (curl_socket_t)fd, mask);
  }
  if (e->sock_oom) dh3_engine_check_sockets(L, e);
  if (mc != CURLM_OK)
    return luaL_error(L, "dh3.engine: curl_multi_socket_action: %s", curl_multi_strerror(mc));
  lua_pushinteger(L, e->n_active);
  lua_pushinteger(L, e->n_done);
  return 2;
}
/* }====================================================================== */

/*
** engine:perform([timeout [, fds [, ready]]]) -> number of transfers still in flight, fds_ready
** Performs, moves finished transfers to the done queue, and when nothing finished and
** nothing waits for delivery, waits in curl_multi_poll and performs again, until the
** deadline (in socket-action mode: poll(2) on the recorded descriptors, then
** curl_multi_socket_action on the ready ones and on the timer when due). Never blocks longer than timeout (0 = never waits). With no transfers at
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
    int present;
    lua_rawgeti(L, idx, k + 1);
    present = !lua_isnil(L, -1);
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
  deadline = dh3_util_now() + (double)timeout;
  if (e->socket_mode) {
    /* the same loop over poll(2) of the recorded descriptors (see "Socket-action mode") */
    int ms = 0;
    for (;;) {
      double remaining;
      unsigned int k;
      CURLMcode mc = dh3_engine_sock_step(e, ms, extra, n_extra);
      if (e->sock_oom) dh3_engine_check_sockets(L, e);
      if (mc != CURLM_OK)
        return luaL_error(L, "dh3.engine: curl_multi_socket_action: %s", curl_multi_strerror(mc));
      looked = 1;
      for (k = 0; k < n_extra; k++)
        if (extra[k].revents != 0) fds_ready = 1;
      if (e->n_done > 0 || timeout <= 0 || fds_ready) break;
      remaining = deadline - dh3_util_now();
      if (remaining <= 0) break;
      ms = remaining >= (double)(INT_MAX / 1000) ? INT_MAX : (int)(remaining * 1000.0);
    }
  }
  while (!e->socket_mode) {
    int running = 0;
    double remaining;
    int ms;
    unsigned int k;
    CURLMcode mc = curl_multi_perform(e->multi, &running);
    if (mc != CURLM_OK)
      return luaL_error(L, "dh3.engine: curl_multi_perform: %s", curl_multi_strerror(mc));
    if (dh3_engine_collect(e) > 0 || e->n_done > 0 || timeout <= 0 || fds_ready) break;
    remaining = deadline - dh3_util_now();
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
  if (req->flight.anchor > 0) {
    lua_rawgeti(L, anchors, req->flight.anchor);
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
  req->flight.engine = NULL;
  req->flight.state = DH3_REQ_DELIVERED;
  dh3_request_delivered(req);
  if (req->flight.anchor > 0) {
    luaL_unref(L, anchors, req->flight.anchor); /* allocates nothing: its slot exists */
    req->flight.anchor = LUA_NOREF;
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

/* {======================================================================
** The methods of "dh3.request"
** ======================================================================= */

static dh3_request *dh3_engine_check_request(lua_State *L) {
  dh3_request *req = (dh3_request *)luaL_checkudata(L, 1, DH3_REQUEST_MT);
  if (req->closed) luaL_error(L, "dh3.request: attempt to use a closed request");
  return req;
}

/* request:cancel() -> true if it stopped something. It is never delivered; a download's
   temp file is removed (a download already finished and renamed stays). */
static int dh3_engine_request_cancel(lua_State *L) {
  dh3_request *req = dh3_engine_check_request(L);
  lua_pushboolean(L, dh3_engine_cancel_request(L, 1, req));
  return 1;
}

/* request:progress() -> bytes_received, total (Content-Length or expect_size, or nil) */
static int dh3_engine_request_progress(lua_State *L) {
  dh3_request_push_progress(L, dh3_engine_check_request(L));
  return 2;
}

/* request:info() -> the diagnostics of a finished transfer (request.c says which), or nil
   before it finished (and once it was cancelled) */
static int dh3_engine_request_info(lua_State *L) {
  dh3_request *req = dh3_engine_check_request(L);
  if (req->flight.state != DH3_REQ_DONE && req->flight.state != DH3_REQ_DELIVERED) {
    lua_pushnil(L);
  } else {
    dh3_request_push_info(L, req);
  }
  return 1;
}

static int dh3_engine_request_close_l(lua_State *L) {
  dh3_request *req = (dh3_request *)luaL_checkudata(L, 1, DH3_REQUEST_MT);
  dh3_engine_close_request(L, 1, req);
  return 0;
}

/* "dh3.request (0x..., GET download, active)" */
static int dh3_engine_request_tostring(lua_State *L) {
  dh3_request *req = (dh3_request *)luaL_checkudata(L, 1, DH3_REQUEST_MT);
  if (req->closed) {
    lua_pushfstring(L, "dh3.request (%p, closed)", (void *)req);
  } else {
    lua_pushfstring(L, "dh3.request (%p, %s, %s)", (void *)req, dh3_request_describe(req),
                    dh3_engine_state_names[req->flight.state]);
  }
  return 1;
}
/* }====================================================================== */

static const luaL_Reg dh3_engine_methods[] = {
  {"request", dh3_engine_request},
  {"perform", dh3_engine_perform},
  {"next_done", dh3_engine_next_done},
  {"pending", dh3_engine_pending},
  {"use_socket_action", dh3_engine_use_socket_action},
  {"socket_mode", dh3_engine_socket_mode},
  {"watched", dh3_engine_watched},
  {"timeout", dh3_engine_timeout},
  {"socket_action", dh3_engine_socket_action_l},
  {"close", dh3_engine_close_l},
  {NULL, NULL}
};

static const luaL_Reg dh3_engine_meta[] = {
  {"__gc", dh3_engine_close_l},
  {"__close", dh3_engine_close_l},
  {"__tostring", dh3_engine_tostring},
  {NULL, NULL}
};

static const luaL_Reg dh3_engine_request_methods[] = {
  {"cancel", dh3_engine_request_cancel},
  {"progress", dh3_engine_request_progress},
  {"info", dh3_engine_request_info},
  {NULL, NULL}
};

static const luaL_Reg dh3_engine_request_meta[] = {
  {"__gc", dh3_engine_request_close_l},
  {"__close", dh3_engine_request_close_l},
  {"__tostring", dh3_engine_request_tostring},
  {NULL, NULL}
};

/* Creates (or, on a second luaopen in the same state, refreshes) a metatable. */
static void dh3_engine_metatable(lua_State *L, const char *name, const luaL_Reg *meta,
                                 const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

void dh3_engine_open(lua_State *L) {
  dh3_engine_metatable(L, DH3_ENGINE_MT, dh3_engine_meta, dh3_engine_methods);
  dh3_engine_metatable(L, DH3_REQUEST_MT, dh3_engine_request_meta, dh3_engine_request_methods);
}
