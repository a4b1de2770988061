/*
** host.c: a C program that embeds Lua 5.4 and dh3, as an engine would (make embed builds it as
** build/embed/host). dh3 is compiled in (build/embed/libdh3.a): the script below, a C string,
** finds it with no package.path and no dh3 file on disk.
**
** Run: DH3_API_KEY=... DH3_BASE_URL=... [DH3_OUT=folder] [DH3_PROMPT=...] build/embed/host
** It creates a task, waits for it, downloads the image into DH3_OUT (default: the current
** folder) and prints the saved path. Exit status 0 on success, 1 on any failure.
*/
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "dh3_embed.h"

static const char script[] =
  "local dh3 = require 'dh3'\n"
  "local client = assert(dh3.new{ api_key = os.getenv('DH3_API_KEY'),\n"
  "                               base_url = os.getenv('DH3_BASE_URL') })\n"
  "local task = assert(client:create{ prompt = os.getenv('DH3_PROMPT') or 'a lighthouse in a C host' })\n"
  "assert(task:wait{ interval = 0.25, timeout = 120 })\n"
  "local paths = assert(task:download((os.getenv('DH3_OUT') or '.') .. '/'))\n"
  "print(paths[1])\n"
  "client:close()\n";

int main(void) {
  int status;
  /* the five lines an engine adds (the first two it has already) */
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "dh3", luaopen_dh3, 0);
  lua_pop(L, 1);
  status = luaL_dostring(L, script);

  /* dh3's errors are tables with a __tostring: luaL_tolstring, not lua_tostring */
  if (status != LUA_OK) fprintf(stderr, "host: %s\n", luaL_tolstring(L, -1, NULL));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
