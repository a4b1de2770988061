/*
** pool.c: what an engine's requests share and reuse: idle easy handles, and the last few
** request header lists.
**
** A handle is made with the options that are the same for every request of its engine
** (below) and is never reset: curl_easy_reset would drop those too. Whatever a request
** sets is request.c's table (DH3_REQUEST_OPTIONS), which sets every option of it on every
** request and puts the defaults back when the handle returns here. The connections
** themselves live in the multi handle's cache, so keep-alive works whether or not a handle
** is reused.
**
** A leaf: it calls libcurl and the C library only, and knows nothing of requests.
*/
#include "dh3.h"

#include <stdlib.h>
#include <string.h>

/* curl_easy_setopt(h, opt, val), returning its error from the calling function (which has
   CURL *h and CURLcode rc in scope) */
#define DH3_SET(opt, val)                                            \
  do {                                                               \
    if ((rc = curl_easy_setopt(h, opt, val)) != CURLE_OK) return rc; \
  } while (0)

/* {======================================================================
** Easy handles
** ======================================================================= */

int dh3_pool_init(dh3_pool *p, int cap, const char *ca_file, const char *proxy) {
  p->idle = calloc((size_t)(cap > 0 ? cap : 1), sizeof(dh3_easy *));
  if (p->idle == NULL) return 0;
  p->len = 0;
  p->cap = cap;
  p->ca_file = ca_file;
  p->proxy = proxy;
  return 1;
}

void dh3_pool_free_easy(dh3_easy *easy) {
  if (easy == NULL) return;
  curl_easy_cleanup(easy->curl);
  free(easy);
}

/* The options that are the same for every request of the pool's engine. */
static CURLcode dh3_pool_setup(const dh3_pool *p, dh3_easy *easy) {
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
  DH3_SET(CURLOPT_TCP_KEEPALIVE, 1L);
  /* the defaults, said out loud: there is no option to turn verification off */
  DH3_SET(CURLOPT_SSL_VERIFYPEER, 1L);
  DH3_SET(CURLOPT_SSL_VERIFYHOST, 2L);
  /* No CURLOPT_USERAGENT: the User-Agent goes in the request's header list, which libcurl
     sends as it is, where the option made it format the line again for every request (a
     tenth of its work per request: bench/RESULTS.md). */
  if (p->ca_file != NULL) DH3_SET(CURLOPT_CAINFO, p->ca_file);
  if (p->proxy != NULL) DH3_SET(CURLOPT_PROXY, p->proxy);
  DH3_SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  return CURLE_OK;
}

/* An idle easy handle, or a new one with the engine's options; NULL when out of memory or
   an option was refused (*rc then says which error, or CURLE_OK for out of memory). */
dh3_easy *dh3_pool_take(dh3_pool *p, CURLcode *rc) {
  dh3_easy *easy;
  *rc = CURLE_OK;
  if (p->len > 0) {
    easy = p->idle[--p->len];
  } else {
    easy = calloc(1, sizeof(*easy));
    if (easy == NULL) return NULL;
    easy->curl = curl_easy_init();
    if (easy->curl == NULL || (*rc = dh3_pool_setup(p, easy)) != CURLE_OK) {
      dh3_pool_free_easy(easy);
      return NULL;
    }
  }
  easy->uses++;
  return easy;
}

/* Takes back a handle that is in no multi handle and points at nothing of a request's
   (request.c put its defaults back); kept while there is room and the pool is open. */
void dh3_pool_give(dh3_pool *p, dh3_easy *easy) {
  if (easy == NULL) return;
  if (!p->closed && p->len < p->cap) {
    p->idle[p->len++] = easy;
  } else {
    dh3_pool_free_easy(easy);
  }
}
/* }====================================================================== */

/* {======================================================================
** Header lists shared by requests
** ======================================================================= */

void dh3_pool_release_headers(dh3_headers *h) {
  if (h != NULL && --h->refs == 0) {
    curl_slist_free_all(h->list);
    free(h);
  }
}

/* Whether h holds exactly lines[0..n-1], in that order. */
static int dh3_pool_headers_equal(const dh3_headers *h, const char *const *lines, int n) {
  const struct curl_slist *l = h->list;
  int i;
  for (i = 0; i < n; i++, l = l->next)
    if (l == NULL || strcmp(l->data, lines[i]) != 0) return 0;
  return l == NULL;
}

/* A list of lines[0..n-1] with a reference for the caller: one of the recent lists if equal
   (no copy at all: the same headers go with every request of a client), else a new one,
   which becomes the most recent. NULL when out of memory. */
dh3_headers *dh3_pool_headers(dh3_pool *p, const char *const *lines, int n) {
  dh3_headers *h;
  int i, k;
  for (k = 0; k < DH3_HEADER_CACHE; k++) {
    h = p->headers[k];
    if (h != NULL && dh3_pool_headers_equal(h, lines, n)) {
      for (; k > 0; k--) p->headers[k] = p->headers[k - 1];
      p->headers[0] = h;
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
      dh3_pool_release_headers(h);
      return NULL;
    }
    h->list = l;
  }
  dh3_pool_release_headers(p->headers[DH3_HEADER_CACHE - 1]); /* the least recent goes */
  for (k = DH3_HEADER_CACHE - 1; k > 0; k--) p->headers[k] = p->headers[k - 1];
  p->headers[0] = h;
  h->refs++; /* the pool's */
  return h;
}
/* }====================================================================== */

/* Frees the idle handles and lets go of the header lists (a request still holding one keeps
   it alive); from here on, handles given back are cleaned up. Idempotent, and safe on a
   pool that is all zeros (an engine that failed before dh3_pool_init). */
void dh3_pool_close(dh3_pool *p) {
  int i;
  p->closed = 1;
  for (i = 0; i < p->len; i++) dh3_pool_free_easy(p->idle[i]);
  free(p->idle);
  p->idle = NULL;
  p->len = p->cap = 0;
  for (i = 0; i < DH3_HEADER_CACHE; i++) {
    dh3_pool_release_headers(p->headers[i]);
    p->headers[i] = NULL;
  }
}
