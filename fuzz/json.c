/*
** json.c: the JSON bridge of src/json.c. The whole input is one string for
** core.json_decode; checks.json then takes a table it returns through core.json_encode
** and back (see fuzz/checks.lua for what must hold).
*/
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = dh3_fuzz_state();
  lua_pushlstring(L, (const char *)data, size);
  dh3_fuzz_check(L, "json", 1);
  lua_settop(L, 0);
  return 0;
}
