/*
** fuzz.h: what the libFuzzer harnesses of dh3 share (fuzz/README.md).
**
** Every harness feeds its input to our C and Lua code in one lua_State made once per
** process (the modules stay loaded, as in a host), then hands what came back to the
** matching function of fuzz/checks.lua, which asserts the documented results. A Lua error
** anywhere in that call (a parser that raised instead of returning nil, err, or a broken
** invariant) is reported and abort()s, which libFuzzer records as a crash. The stack is
** emptied after each input, so nothing accumulates but garbage the collector takes.
** The harnesses embed Lua 5.4 (the Makefile's FUZZ_LUA_PC), whatever Lua the core is built
** for otherwise: they use its API directly (lua_rotate, lua_gc's 5.4 form).
*/
#ifndef DH3_FUZZ_H
#define DH3_FUZZ_H

#include "dh3.h"

#include <stdint.h>

/* libFuzzer's entry point, defined by each harness */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* defined in src/core.c (the one exported symbol of the module) */
int luaopen_dh3_core(lua_State *L);

/* The process's lua_State: standard libraries, dh3.core, lua-cjson, lua/ of the tree on
   package.path, and fuzz/checks.lua. Made at the first call; aborts when it cannot be. */
lua_State *dh3_fuzz_state(void);

/* Calls checks[name] with the nargs values on the top of the stack (which it pops), with
   Lua-line coverage on. A Lua error: printed with its traceback, then abort(). */
void dh3_fuzz_check(lua_State *L, const char *name, int nargs);

/* Prints "dh3 fuzz: <what>" and aborts: for the C-side invariants of a harness. */
void dh3_fuzz_fail(const char *what);

#endif
