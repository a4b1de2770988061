/*
** core.c: the entry of the Lua module `dh3.core` and nothing else: luaopen_dh3_core, the
** module's function table, curl_global_init once per process, and the pin that keeps the
** module loaded. Every function of the table is defined in the file that owns it (dh3.h
** draws the whole tree).
*/
/* dladdr, RTLD_NODELETE, RTLD_NOLOAD (glibc, musl, the BSDs, macOS): see dh3_core_pin() */
#define _GNU_SOURCE
#include "dh3.h"

#include <dlfcn.h>

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
  {"now", dh3_util_now_l},
  {"parse_http_date", dh3_util_parse_http_date},
  {"engine", dh3_engine_new},
  {"journal", dh3_journal_new},
  {"trap_interrupt", dh3_interrupt_trap},
  {"interrupted", dh3_interrupt_seen},
  {"mkdir", dh3_fs_mkdir},
  {NULL, NULL}
};

__attribute__((visibility("default"))) int luaopen_dh3_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_dh3_core(lua_State *L) {
  if (!dh3_core_global_init()) return luaL_error(L, "dh3.core: curl_global_init failed");
  dh3_engine_open(L); /* "dh3.engine" and "dh3.request" */
  dh3_journal_open(L);
  luaL_newlib(L, dh3_core_functions);
  lua_pushliteral(L, DH3_VERSION);
  lua_setfield(L, -2, "VERSION");
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  dh3_json_open(L);
  return 1;
}
