/*
** response.c: the response path, from the bytes libcurl hands to the callbacks of
** src/request.c to the error or document the Lua layer makes of them.
**
** One input is one transfer:
**
**   byte 0     control bits (below)
**   then       the head: header lines, each up to and including its '\n', given one call
**              each to dh3_request_on_header, as libcurl does (status lines included, and
**              the blank line that ends a block). After a blank line ("\n" or "\r\n") the
**              head goes on only if the next bytes are "HTTP/" (a 100 Continue, a followed
**              redirect: libcurl passes the headers of every response of a transfer).
**   the rest   the body, in chunks to dh3_request_on_body.
**
**   control    bits 0-2  body chunk size: whole, 1, 2, 7, 64, 1000, 4096, 16384 bytes
**              bits 3-4  max_body: the default 4 MiB, 16, 1024, 65536 bytes
**              bit  5    an image kept in memory: expect_size 64 (Client:_download's case)
**              bits 6-7  how the transfer ends: 0 as libcurl would after these bytes,
**                        1 RECV_ERROR (cut), 2 OPERATION_TIMEDOUT, 3 COULDNT_CONNECT
**                        (no byte at all: the head and body are not fed)
**
** Each line and chunk is a heap copy of exactly its length, so ASan sees any read past it.
** A callback that refuses (returns other than the length) ends the transfer as libcurl
** does, with CURLE_WRITE_ERROR; a transfer without a status line ends with
** WEIRD_SERVER_REPLY (libcurl refuses it). Then dh3_request_complete and
** dh3_request_push_result make the result table Lua sees, and checks.response takes it
** through errors.from_response, the retry policy, output.parse and download.outcome.
*/
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static const size_t dh3_fuzz_chunks[8] = {0, 1, 2, 7, 64, 1000, 4096, 16384};
static const size_t dh3_fuzz_max_bodies[4] = {DH3_DEFAULT_MAX_BODY, 16, 1024, 65536};
#define DH3_FUZZ_EXPECT 64

static int dh3_fuzz_is_blank(const uint8_t *line, size_t len) {
  return (len == 1 && line[0] == '\n') || (len == 2 && line[0] == '\r' && line[1] == '\n');
}

/* one callback call on a heap copy; returns whether libcurl would go on */
static int dh3_fuzz_feed(dh3_request *req, int header, const uint8_t *p, size_t len) {
  char *copy = malloc(len > 0 ? len : 1);
  size_t got;
  if (copy == NULL) dh3_fuzz_fail("out of memory");
  if (len > 0) memcpy(copy, p, len);
  got = header ? dh3_request_on_header(copy, 1, len, req) : dh3_request_on_body(copy, 1, len, req);
  free(copy);
  if (got != len && got != 0) dh3_fuzz_fail("a callback returned neither its length nor 0");
  return got == len;
}

/* Feeds the head and the body; returns how the transfer ended. */
static CURLcode dh3_fuzz_transfer(dh3_request *req, const uint8_t *p, size_t n, size_t chunk) {
  size_t i = 0;
  while (i < n) { /* the head */
    const uint8_t *nl = memchr(p + i, '\n', n - i);
    size_t len = nl != NULL ? (size_t)(nl - (p + i)) + 1 : n - i;
    int blank = dh3_fuzz_is_blank(p + i, len);
    if (!dh3_fuzz_feed(req, 1, p + i, len)) return CURLE_WRITE_ERROR;
    i += len;
    if (blank && !(n - i >= 5 && memcmp(p + i, "HTTP/", 5) == 0)) break;
  }
  while (i < n) { /* the body */
    size_t len = chunk == 0 || chunk > n - i ? n - i : chunk;
    if (!dh3_fuzz_feed(req, 0, p + i, len)) return CURLE_WRITE_ERROR;
    i += len;
  }
  return CURLE_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static dh3_easy easy; /* never performs: dh3_request_complete only reads its (empty) info */
  lua_State *L = dh3_fuzz_state();
  dh3_request req;
  CURLcode code;
  uint8_t ctl;
  int end;
  if (size == 0) return 0;
  if (easy.curl == NULL && (easy.curl = curl_easy_init()) == NULL)
    dh3_fuzz_fail("curl_easy_init failed");
  ctl = data[0];
  end = (ctl >> 6) & 3;

  /* a request as dh3_request_new leaves it, with no header list, file or engine (its
     flight, engine.c's, is of no concern to the functions of request.c fed here) */
  memset(&req, 0, sizeof(req));
  req.max_body = dh3_fuzz_max_bodies[(ctl >> 3) & 3];
  req.expect_size = (ctl & 0x20) ? DH3_FUZZ_EXPECT : -1;
  req.content_length_n = -1;
  req.easy = &easy;

  code = end == 3 ? CURLE_COULDNT_CONNECT : dh3_fuzz_transfer(&req, data + 1, size - 1,
                                                               dh3_fuzz_chunks[ctl & 7]);
  if (code == CURLE_OK && end == 1) code = CURLE_RECV_ERROR;
  if (code == CURLE_OK && end == 2) code = CURLE_OPERATION_TIMEDOUT;
  if (code == CURLE_OK && req.status_seen == 0) code = CURLE_WEIRD_SERVER_REPLY;

  if (req.body_len > req.max_body) dh3_fuzz_fail("the body buffer went past max_body");
  if (req.body_len > req.body_cap) dh3_fuzz_fail("the body is longer than its buffer");
  if (req.header_bytes > DH3_MAX_HEADER_BYTES) dh3_fuzz_fail("headers went past their cap");
  if (req.expect_size >= 0 && req.bytes > req.expect_size && req.status_seen >= 200 &&
      req.status_seen <= 299)
    dh3_fuzz_fail("a 2xx body went past expect_size");

  dh3_request_complete(&req, code);
  req.status = req.status_seen; /* what CURLINFO_RESPONSE_CODE says of a real transfer */
  if (req.note != NULL && memchr(req.note, '\0', DH3_NOTE_SIZE) == NULL)
    dh3_fuzz_fail("note not terminated");

  lua_pushnil(L); /* the request userdata's slot in the result */
  dh3_request_push_result(L, &req, lua_gettop(L));
  lua_remove(L, -2);
  dh3_request_delivered(&req);
  free(req.retry_after);
  free(req.content_type);

  lua_createtable(L, 0, 2); /* what checks.response needs to know of the request */
  lua_pushinteger(L, (lua_Integer)req.max_body);
  lua_setfield(L, -2, "max_body");
  if (req.expect_size >= 0) {
    lua_pushinteger(L, (lua_Integer)req.expect_size);
    lua_setfield(L, -2, "expect_size");
  }
  dh3_fuzz_check(L, "response", 2);
  lua_settop(L, 0);
  return 0;
}
