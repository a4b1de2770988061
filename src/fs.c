/*
** fs.c: the little of the file system that Lua itself cannot do: making folders.
** A download into "out/new/" needs its folder, and os.execute("mkdir -p") would start a
** shell (quoting, a fork in a host engine's process, a command that may not exist).
*/
#include "dh3.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

/* 0 when `path` names a directory (following links), else the errno that says why not */
static int dh3_fs_is_dir(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return errno;
  return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

/* Makes `path` (a writable copy, changed in place and restored) and its missing parents, each
   with mode 0777 less the umask, as mkdir -p does. 0, or the errno of the part that failed,
   whose prefix is left in `path` (ended at that part) for the message. */
static int dh3_fs_mkdir_p(char *path) {
  char *p = path;
  int err;
  while (*p == '/') p++; /* the root exists */
  for (;;) {
    char saved;
    while (*p != '\0' && *p != '/') p++;
    saved = *p;
    *p = '\0';
    /* looked at first: an existing folder on a read-only file system says EROFS to mkdir */
    err = dh3_fs_is_dir(path);
    if (err == ENOENT) {
      if (mkdir(path, 0777) == 0) {
        err = 0;
      } else {
        err = errno;
        /* made meanwhile by someone else: fine when it is a folder */
        if (err == EEXIST) err = dh3_fs_is_dir(path);
      }
    }
    if (err != 0) return err; /* path ends at the part that failed */
    *p = saved;
    while (*p == '/') p++;
    if (*p == '\0') return 0;
  }
}

/* core.mkdir(path) -> true (also when the folder exists), or nil, message: makes the folder
   and its missing parents (mode 0777 less the umask). */
int dh3_fs_mkdir(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  char *copy;
  int err;
  if (len == 0 || strlen(path) != len) {
    lua_pushnil(L);
    lua_pushstring(L, len == 0 ? "cannot create a folder: empty path"
                               : "cannot create a folder: the path holds a NUL byte");
    return 2;
  }
  /* a userdata, so that nothing leaks if a push below raises (out of memory) */
  copy = (char *)lua_newuserdata(L, len + 1);
  memcpy(copy, path, len + 1);
  err = dh3_fs_mkdir_p(copy);
  if (err == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  if (strcmp(copy, path) == 0) {
    lua_pushfstring(L, "cannot create the folder %s: %s", path, strerror(err));
  } else {
    lua_pushfstring(L, "cannot create the folder %s: %s: %s", path, copy, strerror(err));
  }
  return 2;
}
