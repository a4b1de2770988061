/*
** core.c: the entry of the Lua module `dh3.core`: luaopen_dh3_core, the small module
** functions (now, parse_http_date), curl_global_init once per process, and the table
** of curl error names.
*/
/* dladdr, RTLD_NODELETE, RTLD_NOLOAD (glibc, musl, the BSDs, macOS): see dh3_core_pin() */
#define _GNU_SOURCE
#include "dh3.h"

#include <dlfcn.h>
#include <signal.h>
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

const char *dh3_core_error_name(CURLcode code) {
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
void dh3_core_check_fields(lua_State *L, int idx, const char *const *fields) {
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

double dh3_core_now(void) {
  struct timespec ts;
  /* monotonic: deadlines must not jump with the wall clock */
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0.0;
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dh3_core_now_l(lua_State *L) {
  lua_pushnumber(L, (lua_Number)dh3_core_now());
  return 1;
}

static int dh3_core_parse_http_date(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  time_t t = curl_getdate(s, NULL);
  if (t == (time_t)-1) {
    lua_pushnil(L);
  } else {
    lua_pushinteger(L, (lua_Integer)t);
  }
  return 1;
}

/*
** Ctrl-C for the command line (never installed by the library itself: a host's signals are
** its own). The first SIGINT only raises a flag that the command line's loop reads, so it can
** stop starting work and let the creates in flight bring their ids home; SA_RESETHAND puts the
** default action back at once, so a second Ctrl-C ends the process there and then. Instead of
** lua.c's own handler, which raises "interrupted!" wherever Lua happens to be running (in the
** middle of a journal write, say). The flag is process-wide, as the signal is.
*/
static volatile sig_atomic_t dh3_core_sigint = 0;

static void dh3_core_on_sigint(int sig) {
  (void)sig;
  dh3_core_sigint = 1;
}

/* core.trap_interrupt() -> true: from now on the first SIGINT sets the flag (see above). */
static int dh3_core_trap_interrupt(lua_State *L) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = dh3_core_on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND; /* no SA_RESTART: a wait in poll() ends at once */
  dh3_core_sigint = 0;
  if (sigaction(SIGINT, &sa, NULL) != 0) return luaL_error(L, "dh3.core: sigaction failed");
  lua_pushboolean(L, 1);
  return 1;
}

/* core.interrupted() -> whether a SIGINT came since trap_interrupt */
static int dh3_core_interrupted(lua_State *L) {
  lua_pushboolean(L, dh3_core_sigint != 0);
  return 1;
}

/*
** Keeps this module (and with it libcurl) loaded until the process ends. lua_close
** dlcloses C modules; a host that closes a lua_State and opens another would otherwise
** unload libcurl with its global state still allocated (leaked for good, and the
** leak-checkers lose its roots), then load and curl_global_init it again. Pinned, the
** flag below really means "once per process". Best effort: without dladdr, nothing.
*/
static const char dh3_core_pin_anchor = 0; /* any object of ours locates our file */

static void dh3_core_pin(void) {
#if defined(RTLD_NODELETE) && defined(RTLD_NOLOAD)
  Dl_info info;
  if (dladdr(&dh3_core_pin_anchor, &info) != 0 && info.dli_fname != NULL) {
    /* a reference never given back, and NODELETE: the dlclose of lua_close is a no-op */
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  }
#endif
}

/*
** curl_global_init once per process, never cleaned up: other lua_States (other
** threads of a host engine) may still be using libcurl when one of them closes, and
** the process exit reclaims it. Since 7.84 curl_global_init is itself thread-safe and
** reference counted, so two threads racing past this flag only count twice.
*/
static int dh3_core_global_init(void) {
  static volatile int initialized = 0;
  if (!initialized) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 0;
    dh3_core_pin();
    initialized = 1;
  }
  return 1;
}

static const luaL_Reg dh3_core_functions[] = {
  {"now", dh3_core_now_l},
  {"parse_http_date", dh3_core_parse_http_date},
  {"engine", dh3_engine_new},
  {"journal", dh3_journal_new},
  {"trap_interrupt", dh3_core_trap_interrupt},
  {"interrupted", dh3_core_interrupted},
  {"mkdir", dh3_fs_mkdir},
  {NULL, NULL}
};

__attribute__((visibility("default"))) int luaopen_dh3_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_dh3_core(lua_State *L) {
  if (!dh3_core_global_init()) return luaL_error(L, "dh3.core: curl_global_init failed");
  dh3_engine_open(L);
  dh3_request_open(L);
  dh3_journal_open(L);
  luaL_newlib(L, dh3_core_functions);
  lua_pushliteral(L, DH3_VERSION);
  lua_setfield(L, -2, "VERSION");
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  dh3_json_open(L);
  return 1;
}
