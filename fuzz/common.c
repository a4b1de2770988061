/*
** common.c: the lua_State every harness shares, and coverage of our Lua code.
**
** libFuzzer sees the edges of instrumented C only; liblua and lua-cjson are Debian's
** uninstrumented builds, and most of the webhook parser is Lua. So while a check runs, a
** line hook turns each (chunk, line) -> (chunk, line) step of the Lua code into a hit in
** libFuzzer's extra counters: an input that takes a new path through lua/dh3/ counts
** as new coverage and is kept, as one that takes a new path through src/ is.
*/
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#include "lualib.h"

#ifndef DH3_FUZZ_ROOT
#define DH3_FUZZ_ROOT "."
#endif
#ifndef DH3_FUZZ_CPATH
#define DH3_FUZZ_CPATH "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so"
#endif

#define DH3_FUZZ_LUA_COUNTERS 65536

/* libFuzzer reads (and clears before each input) every byte of this section */
__attribute__((used, section("__libfuzzer_extra_counters")))
static uint8_t dh3_fuzz_lua_counters[DH3_FUZZ_LUA_COUNTERS];
static uintptr_t dh3_fuzz_prev_line;

static lua_State *dh3_fuzz_L;
static int dh3_fuzz_checks_ref = LUA_NOREF;

void dh3_fuzz_fail(const char *what) {
  fprintf(stderr, "dh3 fuzz: %s\n", what);
  fflush(stderr);
  abort();
}

/* ar->source points into the chunk's source string, which lives as long as the loaded
   module: with the line, a stable name for a line of our Lua code */
static void dh3_fuzz_line_hook(lua_State *L, lua_Debug *ar) {
  uintptr_t here;
  size_t i;
  if (!lua_getinfo(L, "S", ar)) return;
  here = ((uintptr_t)ar->source >> 3) * 2654435761u ^ (uintptr_t)ar->currentline * 40503u;
  i = (size_t)((here ^ (dh3_fuzz_prev_line >> 1)) % DH3_FUZZ_LUA_COUNTERS);
  if (dh3_fuzz_lua_counters[i] < 255) dh3_fuzz_lua_counters[i]++;
  dh3_fuzz_prev_line = here;
}

static int dh3_fuzz_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg != NULL ? msg : luaL_typename(L, 1), 1);
  return 1;
}

/* Runs under lua_pcall: the paths, the C module, and the checks. */
static int dh3_fuzz_setup(lua_State *L) {
  const char *root = getenv("DH3_FUZZ_ROOT");
  if (root == NULL || root[0] == '\0') root = DH3_FUZZ_ROOT;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  /* the tree's modules only, never an installed dh3 */
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/fuzz/?.lua", root, root, root);
  lua_setfield(L, -2, "path");
  /* Debian's lua-cjson first (json.c requires it), then the usual places */
  lua_getfield(L, -1, "cpath");
  lua_pushfstring(L, "%s;%s", DH3_FUZZ_CPATH, lua_tostring(L, -1));
  lua_setfield(L, -3, "cpath");
  lua_pop(L, 2);
  luaL_requiref(L, "dh3.core", luaopen_dh3_core, 0);
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "checks");
  lua_call(L, 1, 1);
  /* checks.lua verifies at load that lua-cjson was found: every input would fail otherwise */
  return 1;
}

lua_State *dh3_fuzz_state(void) {
  lua_State *L = dh3_fuzz_L;
  if (L != NULL) return L;
  L = luaL_newstate();
  if (L == NULL) dh3_fuzz_fail("cannot make a lua_State");
  lua_pushcfunction(L, dh3_fuzz_traceback);
  lua_pushcfunction(L, dh3_fuzz_setup);
  if (lua_pcall(L, 0, 1, 1) != LUA_OK) {
    fprintf(stderr, "dh3 fuzz: setup failed (is DH3_FUZZ_ROOT the tree?): %s\n",
            lua_tostring(L, -1));
    abort();
  }
  dh3_fuzz_checks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  dh3_fuzz_L = L;
  return L;
}

void dh3_fuzz_check(lua_State *L, const char *name, int nargs) {
  int base = lua_gettop(L) - nargs; /* the function and the handler go below the args */
  lua_pushcfunction(L, dh3_fuzz_traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, dh3_fuzz_checks_ref);
  lua_getfield(L, -1, name); /* its value unused, as everywhere (src/compat.h) */
  if (lua_type(L, -1) != LUA_TFUNCTION) dh3_fuzz_fail("no such check in checks.lua");
  lua_remove(L, -2);
  lua_rotate(L, base + 1, 2); /* handler, check, args... */
  dh3_fuzz_prev_line = 0;
  lua_sethook(L, dh3_fuzz_line_hook, LUA_MASKLINE, 0);
  if (lua_pcall(L, nargs, 0, base + 1) != LUA_OK) {
    lua_sethook(L, NULL, 0, 0);
    fprintf(stderr, "dh3 fuzz: checks.%s: %s\n", name, lua_tostring(L, -1));
    fflush(stderr);
    abort();
  }
  lua_sethook(L, NULL, 0, 0);
  lua_settop(L, base);
  /* Every input's garbage goes now: an input then frees as much as it allocates, which is
     what libFuzzer's per-input leak check (-detect_leaks) relies on; with garbage left for
     later it would suspect every input, and checking each costs a whole heap scan. */
  lua_gc(L, LUA_GCCOLLECT);
}
