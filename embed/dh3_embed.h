/*
** dh3_embed.h: dh3 compiled into a host program (make embed: build/embed/libdh3.a).
** An engine that embeds Lua 5.4 adds, after luaL_openlibs:
**
**   luaL_requiref(L, "dh3", luaopen_dh3, 0);
**   lua_pop(L, 1);
**
** and links libdh3.a, Lua 5.4, lua-cjson (liblua5.4-cjson.a) and libcurl. Scripts then
** `require "dh3"` with nothing on disk: see examples/embed/host.c.
*/
#ifndef DH3_EMBED_H
#define DH3_EMBED_H

#include <stddef.h>

#include <lua.h>

/* Registers dh3's modules in package.preload (dh3.core, the Lua layer and, unless the host
   has its own, cjson) and returns the dh3 module. */
int luaopen_dh3(lua_State *L);

/* One Lua module compiled in (the table is written by embed/bundle.lua). */
struct dh3_embed_module {
  const char *name;      /* "dh3", "dh3.client", ... */
  const char *chunkname; /* "@lua/dh3/client.lua": what tracebacks say */
  const unsigned char *bytes;
  size_t size;
};

extern const struct dh3_embed_module dh3_embed_modules[];

#endif
