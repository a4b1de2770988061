/*
** compat.h: the one place that knows which Lua the core is built against: 5.1, 5.2, 5.3,
** 5.4, or LuaJIT 2.1 (which says 5.1). Every `#if LUA_VERSION_NUM` of the C core is here,
** none anywhere else. The rest of the core is written against the 5.4 API; below 5.4 this
** header gives it the few 5.4 functions it uses, under their 5.4 names (macros that lead to
** dh3_compat_* functions of our own, so a name that LuaJIT or 5.2 also declares never
** clashes with its declaration), and the core keeps these rules, which no header can
** enforce:
**
**   - The value a getter returns (lua_getfield, lua_rawget, lua_rawgeti, lua_gettable,
**     lua_getglobal) is never used: they return void before 5.3. Call, then lua_type(L, -1).
**     lua_getiuservalue is ours below 5.4 and returns the type on every Lua.
**   - No %I (nor %U) in lua_pushfstring or luaL_error: 5.1 and 5.2 do not know it.
**     Format an integer with dh3_compat_fmtint into a buffer of DH3_INTEGER_BUFSIZE, then %s.
**   - No lua_Unsigned (32 bits in 5.2, absent in 5.1): compare sizes as uintmax_t.
**   - Integers. Below 5.3 every Lua number is a double and lua_Integer is a ptrdiff_t the
**     API converts to and from: an integer past 2^53 cannot be told from its neighbours.
**     So below 5.3 lua_tointegerx and lua_isinteger accept only numbers with an integral
**     value within +-LUA_MAXINTEGER (2^53 - 1), luaL_checkinteger and luaL_optinteger
**     raise on anything else (as 5.3 raises on 1.5), and LUA_MAXINTEGER is 2^53 - 1: a
**     limit checked against it refuses, never truncates. A value the core pushes with
**     lua_pushinteger arrives as a double there (1 and 1.0 are one number below 5.3);
**     every such value (sizes, byte counts, statuses, descriptors) is far below 2^53.
**   - User values: below 5.4 lua_newuserdatauv(L, size, nuv) with nuv > 0 keeps the nuv
**     values in a table of nuv slots, the userdata's user value (5.2, 5.3) or environment
**     (5.1, LuaJIT), which the collector traverses as 5.4 does its user values. A userdata
**     made with nuv 0 has no such table: never ask it for a user value (on 5.1 its
**     environment is the global table). lua_setiuservalue with n above nuv returns 0 in
**     5.4 and writes anyway below it: the core never does that.
**   - __close is a 5.4 metamethod; below it only __gc and explicit close() calls run.
*/
#ifndef DH3_COMPAT_H
#define DH3_COMPAT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "lua.h"
#include "lauxlib.h"

#ifndef LUA_OK
#define LUA_OK 0
#endif

/* An integer, for a message: "%s" of dh3_compat_fmtint(buf, v), buf of DH3_INTEGER_BUFSIZE. */
#define DH3_INTEGER_BUFSIZE 24
static inline const char *dh3_compat_fmtint(char *buf, lua_Integer v) {
  snprintf(buf, DH3_INTEGER_BUFSIZE, "%lld", (long long)v);
  return buf;
}

/* {======================================================================
** Lua 5.1 and LuaJIT 2.1: what 5.2 added to the API
** ======================================================================= */
#if LUA_VERSION_NUM < 502

#define lua_rawlen(L, i) lua_objlen(L, (i))

#define lua_absindex(L, i) dh3_compat_absindex(L, (i))
static inline int dh3_compat_absindex(lua_State *L, int i) {
  return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}

/* sets each function of l, with the nup values on the stack top as its upvalues, into the
   table below them; pops the upvalues */
#define luaL_setfuncs(L, l, nup) dh3_compat_setfuncs(L, (l), (nup))
static inline void dh3_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  int table = lua_gettop(L) - nup, k;
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    for (k = 1; k <= nup; k++) lua_pushvalue(L, table + k);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, table, l->name);
  }
  lua_settop(L, table);
}

#undef luaL_newlibtable
#undef luaL_newlib
#define luaL_newlibtable(L, l) lua_createtable(L, 0, (int)(sizeof(l) / sizeof((l)[0])) - 1)
#define luaL_newlib(L, l) (luaL_newlibtable(L, l), luaL_setfuncs(L, (l), 0))

#define luaL_setmetatable(L, tname) dh3_compat_setmetatable(L, (tname))
static inline void dh3_compat_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}

/* the table of user values: the environment */
#define dh3_compat_pushuvtable(L, i) lua_getfenv(L, (i))
#define dh3_compat_setuvtable(L, i) ((void)lua_setfenv(L, (i)))

#else

/* the table of user values: the user value */
#define dh3_compat_pushuvtable(L, i) ((void)lua_getuservalue(L, (i)))
#define dh3_compat_setuvtable(L, i) lua_setuservalue(L, (i))

#endif
/* }====================================================================== */

/* {======================================================================
** Below 5.3: integers are doubles (see the rules above)
** ======================================================================= */
#if LUA_VERSION_NUM < 503

#undef LUA_MAXINTEGER
#undef LUA_MININTEGER
#if PTRDIFF_MAX > 9007199254740991
#define LUA_MAXINTEGER ((lua_Integer)9007199254740991) /* 2^53 - 1 */
#else
#define LUA_MAXINTEGER ((lua_Integer)PTRDIFF_MAX)
#endif
#define LUA_MININTEGER (-LUA_MAXINTEGER)

/* whether n is an integer within +-LUA_MAXINTEGER (false for NaN: the comparisons fail) */
static inline int dh3_compat_exact(lua_Number n) {
  return n >= -(lua_Number)LUA_MAXINTEGER && n <= (lua_Number)LUA_MAXINTEGER &&
         (lua_Number)(lua_Integer)n == n;
}

#define lua_isinteger(L, i) dh3_compat_isinteger(L, (i))
static inline int dh3_compat_isinteger(lua_State *L, int i) {
  return lua_type(L, i) == LUA_TNUMBER && dh3_compat_exact(lua_tonumber(L, i));
}

/* as in 5.3: a number (or a string convertible to one) with an exact integer value */
#undef lua_tointeger
#define lua_tointegerx(L, i, isnum) dh3_compat_tointegerx(L, (i), (isnum))
#define lua_tointeger(L, i) dh3_compat_tointegerx(L, (i), NULL)
static inline lua_Integer dh3_compat_tointegerx(lua_State *L, int i, int *isnum) {
  int ok = lua_isnumber(L, i) && dh3_compat_exact(lua_tonumber(L, i));
  if (isnum != NULL) *isnum = ok;
  return ok ? (lua_Integer)lua_tonumber(L, i) : 0;
}

#define luaL_checkinteger(L, arg) dh3_compat_checkinteger(L, (arg))
static inline lua_Integer dh3_compat_checkinteger(lua_State *L, int arg) {
  int ok;
  lua_Integer v = dh3_compat_tointegerx(L, arg, &ok);
  if (!ok) {
    (void)luaL_checknumber(L, arg); /* the usual "number expected, got ..." */
    luaL_argerror(L, arg, "number has no integer representation");
  }
  return v;
}

#define luaL_optinteger(L, arg, def) dh3_compat_optinteger(L, (arg), (def))
static inline lua_Integer dh3_compat_optinteger(lua_State *L, int arg, lua_Integer def) {
  return lua_isnoneornil(L, arg) ? def : dh3_compat_checkinteger(L, arg);
}

#endif
/* }====================================================================== */

/* {======================================================================
** Below 5.4: user values in a table (see the rules above)
** ======================================================================= */
#if LUA_VERSION_NUM < 504

#define lua_newuserdatauv(L, size, nuv) dh3_compat_newuserdatauv(L, (size), (nuv))
static inline void *dh3_compat_newuserdatauv(lua_State *L, size_t size, int nuv) {
  void *p = lua_newuserdata(L, size);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0); /* every slot in the array part: setting one allocates nothing */
    dh3_compat_setuvtable(L, -2);
  }
  return p;
}

/* pushes user value n of the userdata at idx; returns its type (LUA_TNONE, nil pushed, when
   the userdata has no table of user values) */
#define lua_getiuservalue(L, idx, n) dh3_compat_getiuservalue(L, (idx), (n))
static inline int dh3_compat_getiuservalue(lua_State *L, int idx, int n) {
  dh3_compat_pushuvtable(L, idx);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNONE;
  }
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
  return lua_type(L, -1);
}

/* pops a value into user value n of the userdata at idx; 0 when it has no table of them */
#define lua_setiuservalue(L, idx, n) dh3_compat_setiuservalue(L, (idx), (n))
static inline int dh3_compat_setiuservalue(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx); /* before the pushes below */
  dh3_compat_pushuvtable(L, idx);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_insert(L, -2); /* the table, the value */
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
  return 1;
}

#endif
/* }====================================================================== */

#endif
