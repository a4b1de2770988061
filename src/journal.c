/*
** journal.c: "dh3.journal_file", what the journal needs from the system and Lua's io
** cannot give: a lock that another process sees, appends that are on the disk before
** they return, cutting a torn tail away, and an atomic rewrite for compaction. What the
** records mean (format, replay, which records compaction keeps) is lua/dh3/journal.lua.
**
** The lock lives on a separate file, PATH.lock, never renamed nor removed: compaction
** renames a new journal over PATH, and a lock taken on PATH itself would from then on
** guard a file nobody opens. It is an open file description lock (F_OFD_SETLK, Linux
** 3.15 and later) where there is one: it belongs to the descriptor, so a second opener
** in the same process is refused as well, and closing some other descriptor of the file
** does not drop it (a classic fcntl lock has both flaws; it is the fallback elsewhere).
** Either kind is released by the kernel when the holder dies, SIGKILL included. OFD
** locks do not report their owner's pid, so the holder writes its pid into the lock
** file, for the refusal to name it.
**
** Every descriptor is O_CLOEXEC: a child started by io.popen or os.execute must not
** inherit the lock (with an OFD lock it would keep the journal locked after we die).
*/
/* F_OFD_SETLK and O_DIRECTORY (glibc); fdatasync, fchmod: POSIX */
#define _GNU_SOURCE
#include "dh3.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DH3_JOURNAL_LOCK_SUFFIX ".lock"
#define DH3_JOURNAL_TEMP_SUFFIX ".compact" /* one name is enough: we hold the lock */

typedef struct {
  int fd;     /* the journal, O_APPEND; -1 when closed */
  int lockfd; /* PATH.lock, the lock held on it; -1 when closed */
  int closed;
  char *path; /* owned */
  char *temp; /* PATH.compact (owned) */
} dh3_journal;

/* {======================================================================
** Helpers
** ======================================================================= */

static char *dh3_journal_concat(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  char *p = malloc(na + nb + 1);
  if (p == NULL) return NULL;
  memcpy(p, a, na);
  memcpy(p + na, b, nb + 1);
  return p;
}

/* Writes all of s, across short writes and signals; 0 or an errno. */
static int dh3_journal_write_all(int fd, const char *s, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, s, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    s += n;
    len -= (size_t)n;
  }
  return 0;
}

/* The folder that holds path: a rename or a new file in it is durable only once the
   folder itself is synced. 0 or an errno; a file system that cannot sync a folder
   (EINVAL) has nothing to sync. */
static int dh3_journal_sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir;
  int fd, rc = 0;
  if (slash == NULL) {
    dir = dh3_journal_concat(".", "");
  } else if (slash == path) {
    dir = dh3_journal_concat("/", "");
  } else {
    dir = malloc((size_t)(slash - path) + 1);
    if (dir != NULL) {
      memcpy(dir, path, (size_t)(slash - path));
      dir[slash - path] = '\0';
    }
  }
  if (dir == NULL) return ENOMEM;
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0) return errno;
  if (fsync(fd) != 0 && errno != EINVAL) rc = errno;
  close(fd);
  return rc;
}

/* Opens a regular file, never blocking (O_NONBLOCK: a FIFO in its place would otherwise
   wait for a reader forever). Returns the descriptor, or -1 with errno set. */
static int dh3_journal_open_regular(const char *path, int flags, mode_t mode) {
  struct stat st;
  int err, fd = open(path, flags | O_NONBLOCK | O_CLOEXEC, mode);
  if (fd < 0) return -1;
  if (fstat(fd, &st) != 0) {
    err = errno;
  } else if (!S_ISREG(st.st_mode)) {
    err = EINVAL; /* a folder, a FIFO, a device: not a journal */
  } else {
    return fd;
  }
  close(fd);
  errno = err;
  return -1;
}

/* Takes the exclusive lock on fd without waiting: 0, or an errno (EAGAIN or EACCES when
   someone holds it). */
static int dh3_journal_lock(int fd) {
  struct flock fl;
  int rc;
  memset(&fl, 0, sizeof(fl)); /* l_pid must be 0 for an OFD lock */
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0; /* the whole file, whatever its size */
#ifdef F_OFD_SETLK
  do rc = fcntl(fd, F_OFD_SETLK, &fl); while (rc != 0 && errno == EINTR);
  if (rc == 0 || errno != EINVAL) return rc == 0 ? 0 : errno;
  /* EINVAL: a kernel older than 3.15; the classic lock below */
  memset(&fl, 0, sizeof(fl));
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
#endif
  do rc = fcntl(fd, F_SETLK, &fl); while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

/* The pid the holder wrote into the lock file, or 0 when there is none (yet). */
static long dh3_journal_holder(int lockfd) {
  char buf[32];
  ssize_t n = pread(lockfd, buf, sizeof(buf) - 1, 0);
  char *end;
  long pid;
  if (n <= 0) return 0;
  buf[n] = '\0';
  pid = strtol(buf, &end, 10);
  return (end != buf && pid > 0) ? pid : 0;
}
/* }====================================================================== */

/* {======================================================================
** Open and close
** ======================================================================= */

static dh3_journal *dh3_journal_check(lua_State *L) {
  dh3_journal *j = (dh3_journal *)luaL_checkudata(L, 1, DH3_JOURNAL_MT);
  if (j->closed) luaL_error(L, "dh3.journal_file: attempt to use a closed journal");
  return j;
}

/* The one close behind close, __gc and __close; idempotent. Closing the lock file's
   descriptor is what releases the lock. */
static void dh3_journal_close(dh3_journal *j) {
  if (j->closed) return;
  j->closed = 1;
  if (j->fd >= 0) close(j->fd);
  if (j->lockfd >= 0) close(j->lockfd);
  j->fd = j->lockfd = -1;
  free(j->path);
  free(j->temp);
  j->path = j->temp = NULL;
}

/* Undoes an open that failed (the userdata's close frees the rest): nil, message,
   reason ("locked" or "io"). */
static int dh3_journal_fail(lua_State *L, dh3_journal *j, const char *reason,
                            const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, reason);
  dh3_journal_close(j);
  return 3;
}

/* core.journal(path) -> journal_file | nil, message, reason. Creates the file when absent,
   and makes its new name durable. */
int dh3_journal_new(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  dh3_journal *j;
  char pid[32];
  int err;
  luaL_argcheck(L, len > 0 && strlen(path) == len, 1, "a path without NUL bytes expected");

  j = (dh3_journal *)lua_newuserdatauv(L, sizeof(*j), 0);
  memset(j, 0, sizeof(*j));
  j->fd = j->lockfd = -1;
  luaL_setmetatable(L, DH3_JOURNAL_MT); /* from here __gc frees whatever is attached */
  j->path = dh3_journal_concat(path, "");
  j->temp = dh3_journal_concat(path, DH3_JOURNAL_TEMP_SUFFIX);
  if (j->path == NULL || j->temp == NULL) return dh3_journal_fail(L, j, "io", "out of memory");

  {
    char *lockpath = dh3_journal_concat(path, DH3_JOURNAL_LOCK_SUFFIX);
    if (lockpath == NULL) return dh3_journal_fail(L, j, "io", "out of memory");
    j->lockfd = dh3_journal_open_regular(lockpath, O_RDWR | O_CREAT, 0600);
    err = errno;
    free(lockpath);
  }
  if (j->lockfd < 0)
    return dh3_journal_fail(L, j, "io",
                            lua_pushfstring(L, "cannot open the journal's lock file %s%s: %s",
                                            path, DH3_JOURNAL_LOCK_SUFFIX, strerror(err)));
  err = dh3_journal_lock(j->lockfd);
  if (err == EAGAIN || err == EACCES) {
    long holder = dh3_journal_holder(j->lockfd);
    if (holder == (long)getpid())
      return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
        "the journal %s is in use by this process (%d): it is already open", path, (int)holder));
    if (holder > 0)
      return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
        "the journal %s is in use by process %d", path, (int)holder));
    return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
      "the journal %s is in use by another process", path));
  }
  if (err != 0)
    return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
      "cannot lock the journal %s: %s", path, strerror(err)));
  /* best effort: only the refusal's message depends on it */
  snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
  if (ftruncate(j->lockfd, 0) == 0 && pwrite(j->lockfd, pid, strlen(pid), 0) < 0) {
    /* nothing to undo: a refused opener then says "another process" */
  }

  /* a compaction that a crash interrupted left its temp file; ours to remove, under the lock */
  (void)unlink(j->temp);

  j->fd = dh3_journal_open_regular(path, O_WRONLY | O_APPEND, 0);
  if (j->fd < 0 && errno == ENOENT) {
    j->fd = dh3_journal_open_regular(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL, 0600);
    if (j->fd >= 0 && (err = dh3_journal_sync_dir(path)) != 0)
      return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
        "cannot make the new journal %s durable: %s", path, strerror(err)));
  }
  if (j->fd < 0)
    return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
      "cannot open the journal %s: %s", path, strerror(errno)));
  lua_settop(L, 2);
  return 1;
}

static int dh3_journal_close_l(lua_State *L) {
  dh3_journal_close((dh3_journal *)luaL_checkudata(L, 1, DH3_JOURNAL_MT));
  return 0;
}
/* }====================================================================== */

/* {======================================================================
** Methods
** ======================================================================= */

static int dh3_journal_error(lua_State *L, const char *what, const char *path, int err) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s %s: %s", what, path, strerror(err));
  return 2;
}

/* file:append(s) -> true | nil, message. s (whole records) is on the disk when this
   returns true. On failure the file is cut back to its size before: a half-written
   record must not sit in the middle of the journal once later records follow it. */
static int dh3_journal_append(lua_State *L) {
  dh3_journal *j = dh3_journal_check(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  off_t before = lseek(j->fd, 0, SEEK_END); /* O_APPEND writes there; we hold the lock */
  int err;
  if (before < 0) return dh3_journal_error(L, "cannot append to the journal", j->path, errno);
  err = dh3_journal_write_all(j->fd, s, len);
  /* fdatasync: the data and the new size, all that reading the record back needs */
  if (err == 0 && fdatasync(j->fd) != 0) err = errno;
  if (err != 0) {
    /* after a failed sync the kernel's copy is of unknown state: claim nothing */
    if (ftruncate(j->fd, before) == 0) (void)fdatasync(j->fd);
    return dh3_journal_error(L, "cannot append to the journal", j->path, err);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* file:truncate(size) -> true | nil, message: cuts a torn tail away, durably. */
static int dh3_journal_truncate(lua_State *L) {
  dh3_journal *j = dh3_journal_check(L);
  lua_Integer size = luaL_checkinteger(L, 2);
  struct stat st;
  if (fstat(j->fd, &st) != 0) return dh3_journal_error(L, "cannot read the size of", j->path, errno);
  luaL_argcheck(L, size >= 0 && size <= (lua_Integer)st.st_size, 2,
                "size must be from 0 to the journal's size");
  if (ftruncate(j->fd, (off_t)size) != 0 || fsync(j->fd) != 0)
    return dh3_journal_error(L, "cannot truncate the journal", j->path, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* file:rewrite(s) -> true | nil, message: the journal becomes s, atomically. s goes to
   PATH.compact, is synced, renamed over PATH, and the folder is synced; a crash at any
   point leaves either the old journal or the new one. The temp file's descriptor
   (O_APPEND already) becomes the journal's: opening PATH again could fail after the
   rename, and appends would then go to the old, unlinked file. The mode of the old
   file is kept, so a chmod of the user survives compaction. */
static int dh3_journal_rewrite(lua_State *L) {
  dh3_journal *j = dh3_journal_check(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  struct stat st;
  int fd, err;
  if (fstat(j->fd, &st) != 0) return dh3_journal_error(L, "cannot read the mode of", j->path, errno);
  fd = dh3_journal_open_regular(j->temp, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return dh3_journal_error(L, "cannot create", j->temp, errno);
  err = dh3_journal_write_all(fd, s, len);
  if (err == 0 && fchmod(fd, st.st_mode & 07777) != 0) err = errno;
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (err == 0 && rename(j->temp, j->path) != 0) err = errno;
  if (err != 0) {
    close(fd);
    unlink(j->temp);
    return dh3_journal_error(L, "cannot rewrite the journal", j->path, err);
  }
  close(j->fd);
  j->fd = fd;
  /* the rename happened; a failed folder sync can only be reported */
  if ((err = dh3_journal_sync_dir(j->path)) != 0)
    return dh3_journal_error(L, "cannot make the rewritten journal durable:", j->path, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* file:size() -> bytes | nil, message */
static int dh3_journal_size(lua_State *L) {
  dh3_journal *j = dh3_journal_check(L);
  struct stat st;
  if (fstat(j->fd, &st) != 0) return dh3_journal_error(L, "cannot read the size of", j->path, errno);
  lua_pushinteger(L, (lua_Integer)st.st_size);
  return 1;
}

static int dh3_journal_tostring(lua_State *L) {
  dh3_journal *j = (dh3_journal *)luaL_checkudata(L, 1, DH3_JOURNAL_MT);
  if (j->closed) {
    lua_pushfstring(L, "dh3.journal_file (%p, closed)", (void *)j);
  } else {
    lua_pushfstring(L, "dh3.journal_file (%p, %s)", (void *)j, j->path);
  }
  return 1;
}
/* }====================================================================== */

static const luaL_Reg dh3_journal_methods[] = {
  {"append", dh3_journal_append},
  {"truncate", dh3_journal_truncate},
  {"rewrite", dh3_journal_rewrite},
  {"size", dh3_journal_size},
  {"close", dh3_journal_close_l},
  {NULL, NULL}
};

static const luaL_Reg dh3_journal_meta[] = {
  {"__gc", dh3_journal_close_l},
  {"__close", dh3_journal_close_l},
  {"__tostring", dh3_journal_tostring},
  {NULL, NULL}
};

void dh3_journal_open(lua_State *L) {
  luaL_newmetatable(L, DH3_JOURNAL_MT);
  luaL_setfuncs(L, dh3_journal_meta, 0);
  luaL_newlib(L, dh3_journal_methods);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, DH3_JOURNAL_MT);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}
