/*
** util.c: the helpers every part of the core shares, and none of ours that they call: the
** monotonic clock and HTTP dates (core.now, core.parse_http_date), the check that an
** options table holds no unknown key, and the names of libcurl's error codes.
** A leaf: it calls libcurl, Lua and the C library only.
*/
#include "dh3.h"

#include <string.h>
#include <time.h>

/* {======================================================================
** curl error names: CURLE_<name> -> "<name>", the codes libcurl 7.88 has.
** The Lua layer classifies failures by these names, so they are facts, not prose.
** ======================================================================= */
#define DH3_CURL_ERRORS(X)                                                              \
  X(OK) X(UNSUPPORTED_PROTOCOL) X(FAILED_INIT) X(URL_MALFORMAT) X(NOT_BUILT_IN)         \
  X(COULDNT_RESOLVE_PROXY) X(COULDNT_RESOLVE_HOST) X(COULDNT_CONNECT)                   \
  X(WEIRD_SERVER_REPLY) X(REMOTE_ACCESS_DENIED) X(FTP_ACCEPT_FAILED)                    \
  X(FTP_WEIRD_PASS_REPLY) X(FTP_ACCEPT_TIMEOUT) X(FTP_WEIRD_PASV_REPLY)                 \
  X(FTP_WEIRD_227_FORMAT) X(FTP_CANT_GET_HOST) X(HTTP2) X(FTP_COULDNT_SET_TYPE)         \
  X(PARTIAL_FILE) X(FTP_COULDNT_RETR_FILE) X(QUOTE_ERROR) X(HTTP_RETURNED_ERROR)        \
  X(WRITE_ERROR) X(UPLOAD_FAILED) X(READ_ERROR) X(OUT_OF_MEMORY) X(OPERATION_TIMEDOUT)  \
  X(FTP_PORT_FAILED) X(FTP_COULDNT_USE_REST) X(RANGE_ERROR) X(HTTP_POST_ERROR)          \
  X(SSL_CONNECT_ERROR) X(BAD_DOWNLOAD_RESUME) X(FILE_COULDNT_READ_FILE)                 \
  X(LDAP_CANNOT_BIND) X(LDAP_SEARCH_FAILED) X(FUNCTION_NOT_FOUND)                       \
  X(ABORTED_BY_CALLBACK) X(BAD_FUNCTION_ARGUMENT) X(INTERFACE_FAILED)                   \
  X(TOO_MANY_REDIRECTS) X(UNKNOWN_OPTION) X(SETOPT_OPTION_SYNTAX) X(GOT_NOTHING)        \
  X(SSL_ENGINE_NOTFOUND) X(SSL_ENGINE_SETFAILED) X(SEND_ERROR) X(RECV_ERROR)            \
  X(SSL_CERTPROBLEM) X(SSL_CIPHER) X(PEER_FAILED_VERIFICATION) X(BAD_CONTENT_ENCODING)  \
  X(FILESIZE_EXCEEDED) X(USE_SSL_FAILED) X(SEND_FAIL_REWIND) X(SSL_ENGINE_INITFAILED)   \
  X(LOGIN_DENIED) X(TFTP_NOTFOUND) X(TFTP_PERM) X(REMOTE_DISK_FULL) X(TFTP_ILLEGAL)     \
  X(TFTP_UNKNOWNID) X(REMOTE_FILE_EXISTS) X(TFTP_NOSUCHUSER) X(SSL_CACERT_BADFILE)      \
  X(REMOTE_FILE_NOT_FOUND) X(SSH) X(SSL_SHUTDOWN_FAILED) X(AGAIN) X(SSL_CRL_BADFILE)    \
  X(SSL_ISSUER_ERROR) X(FTP_PRET_FAILED) X(RTSP_CSEQ_ERROR) X(RTSP_SESSION_ERROR)       \
  X(FTP_BAD_FILE_LIST) X(CHUNK_FAILED) X(NO_CONNECTION_AVAILABLE)                       \
  X(SSL_PINNEDPUBKEYNOTMATCH) X(SSL_INVALIDCERTSTATUS) X(HTTP2_STREAM)                  \
  X(RECURSIVE_API_CALL) X(AUTH_ERROR) X(HTTP3) X(QUIC_CONNECT_ERROR)

/* codes younger than the rest: only when the headers we build against have them */
#if LIBCURL_VERSION_NUM >= 0x074900
#define DH3_CURL_ERRORS_7_73(X) X(PROXY)
#else
#define DH3_CURL_ERRORS_7_73(X)
#endif
#if LIBCURL_VERSION_NUM >= 0x074d00
#define DH3_CURL_ERRORS_7_77(X) X(SSL_CLIENTCERT)
#else
#define DH3_CURL_ERRORS_7_77(X)
#endif
#if LIBCURL_VERSION_NUM >= 0x075400
#define DH3_CURL_ERRORS_7_84(X) X(UNRECOVERABLE_POLL)
#else
#define DH3_CURL_ERRORS_7_84(X)
#endif

const char *dh3_util_error_name(CURLcode code) {
  switch (code) {
#define DH3_ERROR_CASE(name) case CURLE_##name: return #name;
    DH3_CURL_ERRORS(DH3_ERROR_CASE)
    DH3_CURL_ERRORS_7_73(DH3_ERROR_CASE)
    DH3_CURL_ERRORS_7_77(DH3_ERROR_CASE)
    DH3_CURL_ERRORS_7_84(DH3_ERROR_CASE)
#undef DH3_ERROR_CASE
    default: return "UNKNOWN";
  }
}
/* }====================================================================== */

/* Refuses keys that are not options: a misspelt option is a bug worth a loud error. */
void dh3_util_check_fields(lua_State *L, int idx, const char *const *fields) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i, found = 0;
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_argerror(L, idx, lua_pushfstring(L, "unexpected %s key in options",
                                            luaL_typename(L, -2)));
    for (i = 0; fields[i] != NULL; i++) {
      if (strcmp(fields[i], lua_tostring(L, -2)) == 0) {
        found = 1;
        break;
      }
    }
    if (!found)
      luaL_argerror(L, idx, lua_pushfstring(L, "unknown field '%s'", lua_tostring(L, -2)));
    lua_pop(L, 1);
  }
}

double dh3_util_now(void) {
  struct timespec ts;
  /* monotonic: deadlines must not jump with the wall clock */
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0.0;
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* core.now() -> seconds on the monotonic clock, a float */
int dh3_util_now_l(lua_State *L) {
  lua_pushnumber(L, (lua_Number)dh3_util_now());
  return 1;
}

/* core.parse_http_date(s) -> seconds since the epoch, or nil */
int dh3_util_parse_http_date(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  time_t t = curl_getdate(s, NULL);
  if (t == (time_t)-1) {
    lua_pushnil(L);
  } else {
    lua_pushinteger(L, (lua_Integer)t);
  }
  return 1;
}
