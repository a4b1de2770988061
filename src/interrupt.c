/*
** interrupt.c: Ctrl-C for the command line (core.trap_interrupt, core.interrupted). Never
** installed by the library itself: a host's signals are its own.
**
** The first SIGINT only raises a flag that the command line's loop reads, so it can stop
** starting work and let the creates in flight bring their ids home; SA_RESETHAND puts the
** default action back at once, so a second Ctrl-C ends the process there and then. Instead
** of lua.c's own handler, which raises "interrupted!" wherever Lua happens to be running (in
** the middle of a journal write, say). The flag is process-wide, as the signal is.
** A leaf: it calls Lua and the C library only.
*/
#include "dh3.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t dh3_interrupt_flag = 0;

static void dh3_interrupt_on_sigint(int sig) {
  (void)sig;
  dh3_interrupt_flag = 1;
}

/* core.trap_interrupt() -> true: from now on the first SIGINT sets the flag (see above). */
int dh3_interrupt_trap(lua_State *L) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = dh3_interrupt_on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND; /* no SA_RESTART: a wait in poll() ends at once */
  dh3_interrupt_flag = 0;
  if (sigaction(SIGINT, &sa, NULL) != 0) return luaL_error(L, "dh3.core: sigaction failed");
  lua_pushboolean(L, 1);
  return 1;
}

/* core.interrupted() -> whether a SIGINT came since trap_interrupt */
int dh3_interrupt_seen(lua_State *L) {
  lua_pushboolean(L, dh3_interrupt_flag != 0);
  return 1;
}
