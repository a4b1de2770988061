/*
** webhook.c: the webhook parser. The whole input is one callback body for
** require("dh3.webhook").parse; checks.webhook asserts its documented results and takes
** an accepted delivery on to where its file names become paths.
*/
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = dh3_fuzz_state();
  lua_pushlstring(L, (const char *)data, size);
  dh3_fuzz_check(L, "webhook", 1);
  lua_settop(L, 0);
  return 0;
}
