/*
** json.c: the JSON bridge. A private lua-cjson instance (cjson.new()) made at luaopen,
** so the user's own cjson settings are never changed and ours are never changed by
** them. The instance is an upvalue of json_encode/json_decode: no globals, no registry
** refs, one instance per luaopen (busted reloads the module per spec file; a host may
** open it in several lua_States).
**
** Upvalues of both functions:
**   1  the cjson instance table, or false when lua-cjson could not be loaded
**   2  cjson.null (a lightuserdata), or false
**   3  the load error message, or false
**
** Works with Debian's lua-cjson 2.1.0 and with the luarocks (openresty) fork, which is
** detected by its decode_array_with_array_mt: with either, integers come back as Lua
** integers and null as nil, because the result is walked here after decoding. Below Lua
** 5.3 there are no integers to come back as: numbers stay doubles (compat.h), and the walk
** only turns cjson.null into nil. Debian builds its lua-cjson for each Lua it ships.
*/
#include "dh3.h"

#include <string.h>

#define DH3_JSON_MAX_DEPTH 64
#define DH3_JSON_DEFAULT_MAX_BYTES ((lua_Integer)4 * 1024 * 1024)
#define DH3_JSON_MAX_EXACT 9007199254740992.0 /* 2^53: every integer up to it is a double */

/* Calls instance[name](arg) when the instance has that setting; quietly skips it
   otherwise, so that either fork (or a future version) loads. */
static void dh3_json_configure(lua_State *L, int inst, const char *name, int isbool, int value) {
  lua_getfield(L, inst, name);
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  if (isbool) {
    lua_pushboolean(L, value);
  } else {
    lua_pushinteger(L, value);
  }
  lua_call(L, 1, 0);
}

/* Run under lua_pcall: require("cjson").new(), configured. Returns the instance. */
static int dh3_json_setup(lua_State *L) {
  int inst;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  if (!lua_istable(L, -1)) return luaL_error(L, "require 'cjson' did not return a table");
  lua_getfield(L, -1, "new");
  if (lua_type(L, -1) != LUA_TFUNCTION) return luaL_error(L, "this lua-cjson has no cjson.new()");
  lua_call(L, 0, 1);
  if (!lua_istable(L, -1)) return luaL_error(L, "cjson.new() did not return a table");
  inst = lua_gettop(L);
  /* a bounded depth keeps both cjson and the walk below off deep C stacks */
  dh3_json_configure(L, inst, "decode_max_depth", 0, DH3_JSON_MAX_DEPTH);
  dh3_json_configure(L, inst, "encode_max_depth", 0, DH3_JSON_MAX_DEPTH);
  /* JSON has no NaN, Infinity or hex numbers: refuse them both ways */
  dh3_json_configure(L, inst, "decode_invalid_numbers", 1, 0);
  dh3_json_configure(L, inst, "encode_invalid_numbers", 1, 0);
  /* the luarocks fork: plain tables out of the decoder, as with 2.1.0 */
  dh3_json_configure(L, inst, "decode_array_with_array_mt", 1, 0);
  lua_getfield(L, inst, "decode");
  if (lua_type(L, -1) != LUA_TFUNCTION) return luaL_error(L, "cjson instance has no decode");
  lua_getfield(L, inst, "encode");
  if (lua_type(L, -1) != LUA_TFUNCTION) return luaL_error(L, "cjson instance has no encode");
  lua_pop(L, 2);
  lua_getfield(L, inst, "null"); /* instance, null */
  return 2;
}

/* Raises the load error when cjson is missing; else pushes instance[fname]. */
static void dh3_json_push_function(lua_State *L, const char *fname) {
  if (!lua_toboolean(L, lua_upvalueindex(1))) {
    luaL_error(L, "dh3.core: lua-cjson is not available (%s)",
               lua_isstring(L, lua_upvalueindex(3)) ? lua_tostring(L, lua_upvalueindex(3))
                                                    : "unknown error");
    return;
  }
  lua_getfield(L, lua_upvalueindex(1), fname);
}

/* Converts, in the table at idx and below: cjson.null values to nil (object keys
   disappear, arrays keep a hole), and floats with an exact integer value within
   +-2^53 to Lua integers (cjson 2.1.0 decodes 5 as 5.0). Modifying or clearing
   existing fields during lua_next is allowed. cjson.null is the lightuserdata NULL,
   upvalue 2 (false when unknown, which then matches nothing). Depth is bounded by decode_max_depth,
   the guard here only protects against a decoder that ignores it. */
static int dh3_json_clean(lua_State *L, int idx, int depth) {
  if (depth > DH3_JSON_MAX_DEPTH + 1) return 0;
  if (!lua_checkstack(L, 4)) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int t = lua_type(L, -1);
    if (t == LUA_TLIGHTUSERDATA && lua_rawequal(L, -1, lua_upvalueindex(2))) {
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, idx);
      continue;
    }
    if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number n = lua_tonumber(L, -1);
      /* range first: casting an out-of-range double is undefined behaviour */
      if (n >= -DH3_JSON_MAX_EXACT && n <= DH3_JSON_MAX_EXACT &&
          (lua_Number)(lua_Integer)n == n) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushinteger(L, (lua_Integer)n);
        lua_rawset(L, idx);
        continue;
      }
    } else if (t == LUA_TTABLE) {
      if (!dh3_json_clean(L, lua_gettop(L), depth + 1)) return 0;
    }
    lua_pop(L, 1);
  }
  return 1;
}

/* Calls the cjson function on the stack top with argument 1, protected: cjson raises on bad
   input. 1 with its result pushed, or 0 with nil and a message pushed (for a `return 2`). */
static int dh3_json_call(lua_State *L, const char *fallback) {
  lua_pushvalue(L, 1);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) return 1;
  lua_pushnil(L);
  if (lua_type(L, -2) == LUA_TSTRING) {
    lua_pushvalue(L, -2);
  } else {
    lua_pushstring(L, fallback);
  }
  return 0;
}

/* json_decode(s [, max_bytes]) -> value | nil, errmsg */
static int dh3_json_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_Integer max = luaL_optinteger(L, 2, DH3_JSON_DEFAULT_MAX_BYTES);
  luaL_argcheck(L, max >= 0, 2, "max_bytes must not be negative");
  dh3_json_push_function(L, "decode");
  /* before decoding: cjson exits the process when it runs out of memory */
  if ((uintmax_t)len > (uintmax_t)max) {
    char n1[DH3_INTEGER_BUFSIZE], n2[DH3_INTEGER_BUFSIZE];
    lua_pushnil(L);
    lua_pushfstring(L, "JSON text too large (%s bytes, limit %s)",
                    dh3_compat_fmtint(n1, (lua_Integer)len), dh3_compat_fmtint(n2, max));
    return 2;
  }
  /* cjson stops at a NUL byte and ignores the rest */
  if (memchr(s, '\0', len) != NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "JSON text contains a NUL byte");
    return 2;
  }
  if (!dh3_json_call(L, "JSON decode failed")) return 2;
  switch (lua_type(L, -1)) {
    case LUA_TTABLE:
      if (!dh3_json_clean(L, lua_gettop(L), 1)) {
        lua_pushnil(L);
        lua_pushliteral(L, "JSON nesting too deep");
        return 2;
      }
      break;
    case LUA_TLIGHTUSERDATA:
      if (lua_rawequal(L, -1, lua_upvalueindex(2))) {
        lua_pushnil(L);
        lua_pushliteral(L, "JSON text is null");
        return 2;
      }
      break;
    case LUA_TNUMBER:
      if (!lua_isinteger(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        if (n >= -DH3_JSON_MAX_EXACT && n <= DH3_JSON_MAX_EXACT &&
            (lua_Number)(lua_Integer)n == n) {
          lua_pushinteger(L, (lua_Integer)n);
        }
      }
      break;
    default:
      break;
  }
  return 1;
}

/* json_encode(value) -> string | nil, errmsg */
static int dh3_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  dh3_json_push_function(L, "encode");
  return dh3_json_call(L, "JSON encode failed") ? 1 : 2;
}

/* Adds json_encode and json_decode to the module table on the top of the stack. */
void dh3_json_open(lua_State *L) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, dh3_json_setup);
  if (lua_pcall(L, 0, 2, 0) == LUA_OK) {
    if (lua_type(L, -1) != LUA_TLIGHTUSERDATA) { /* no usable null: walk skips it */
      lua_pop(L, 1);
      lua_pushboolean(L, 0);
    }
    lua_pushboolean(L, 0);
  } else {
    /* cjson missing: json functions raise a clear error when called */
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    lua_pushboolean(L, 0);
    lua_insert(L, -3); /* false, false, msg */
  }
  /* stack: module, instance|false, null|false, msg|false */
  lua_pushvalue(L, top + 1);
  lua_pushvalue(L, top + 2);
  lua_pushvalue(L, top + 3);
  lua_pushcclosure(L, dh3_json_decode, 3);
  lua_setfield(L, top, "json_decode");
  lua_pushcclosure(L, dh3_json_encode, 3);
  lua_setfield(L, top, "json_encode");
  lua_settop(L, top);
}
