/*
** A plain Lua 5.4 host linked with Debian's static liblua5.4.a, which keeps its symbols (the
** lua5.4 binary is stripped): under `perf record` the VM's own functions (luaV_execute, luaH_*,
** luaC_*, ...) show by name. Only for profiling; the benchmarks run lua5.4 itself.
**   luahost script.lua args...       (arg is set as lua5.4 sets it)
** Built by hand (bench/README.md, "Profiling a miss"):
**   cc -O2 -g $(pkg-config --cflags lua5.4) -o /tmp/luahost bench/tools/luahost.c \
**      -Wl,-E /usr/lib/x86_64-linux-gnu/liblua5.4.a -lm -ldl
*/
#include <stdio.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, rc;
  if (argc < 2) {
    fprintf(stderr, "usage: luahost script.lua [args]\n");
    return 2;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);
  if (luaL_loadfile(L, argv[1]) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
  rc = lua_pcall(L, argc - 2, 0, 1);
  if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return rc == LUA_OK ? 0 : 1;
}
