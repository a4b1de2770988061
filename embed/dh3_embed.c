/*
** dh3_embed.c: luaopen_dh3, the one entry of dh3 compiled into a host (make embed). Not part
** of the module build (dh3/core.so): the Makefile compiles the .c files of src/ only.
**
** Everything goes into package.preload, so that `require` finds it before any searcher looks
** at the disk: "dh3.core" (src/, linked in), "cjson" (Debian's static lua-cjson, which the JSON
** bridge requires at luaopen_dh3_core), and the Lua layer as bytecode (embed/bundle.lua). The
** command line (dh3.cli) and the emulator are left out: a host has no use for them. client:listen
** (webhooks) needs luasocket, which the host must provide itself if it wants it.
*/
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "dh3_embed.h"

int luaopen_dh3_core(lua_State *L);
int luaopen_cjson(lua_State *L);

/* The preload loader of one compiled-in module: upvalue 1 is its index in dh3_embed_modules.
   Binary chunks only ("b"): the bytes were made by the build, never by a user. */
static int dh3_embed_load(lua_State *L) {
  const struct dh3_embed_module *m = &dh3_embed_modules[lua_tointeger(L, lua_upvalueindex(1))];
  if (luaL_loadbufferx(L, (const char *)m->bytes, m->size, m->chunkname, "b") != LUA_OK) {
    return luaL_error(L, "dh3 (embedded): cannot load %s: %s", m->name, lua_tostring(L, -1));
  }
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

int luaopen_dh3(lua_State *L) {
  int i, main_index = -1;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_dh3_core);
  lua_setfield(L, -2, "dh3.core");
  /* a host that brings its own lua-cjson keeps it */
  lua_getfield(L, -1, "cjson");
  if (lua_isnil(L, -1)) {
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -3, "cjson");
  }
  lua_pop(L, 1);
  for (i = 0; dh3_embed_modules[i].name != NULL; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, dh3_embed_load, 1);
    lua_setfield(L, -2, dh3_embed_modules[i].name);
    if (strcmp(dh3_embed_modules[i].name, "dh3") == 0) main_index = i;
  }
  lua_pop(L, 1);
  if (main_index < 0) return luaL_error(L, "dh3 (embedded): the dh3 module was not compiled in");
  /* the value of require "dh3": luaL_requiref stores it in package.loaded */
  lua_pushinteger(L, main_index);
  lua_pushcclosure(L, dh3_embed_load, 1);
  lua_call(L, 0, 1);
  return 1;
}
