/*
** journal.c: "dh3.journal_file", what the journal needs from the system and Lua's io
** cannot give: a lock that another process sees, appends that are on the disk before
** they return, cutting a torn tail away, an atomic rewrite for compaction, and a reading
** that changes nothing. What the records mean (format, replay, which records compaction
** keeps) is lua/dh3/journal.lua.
**
** The lock is on the journal file itself, on its inode, whatever name reached it: a
** symbolic link, the real name, a relative path. It is an open file description lock
** (F_OFD_SETLK, Linux 3.15 and later) where there is one: it belongs to the descriptor,
** so a second opener in the same process is refused as well, and closing some other
** descriptor of the file does not drop it (a classic fcntl lock has both flaws; it is the
** fallback elsewhere). Either kind is released by the kernel when the holder dies,
** SIGKILL included.
**
** Compaction replaces the file (a new inode renamed over the old name), so the lock must
** follow: the new file is locked before the rename makes it the journal, and the old one
** is closed (its lock released) only after. An opener that opened the old file just
** before the rename may then win the old file's lock: so every opener, once it holds a
** lock, checks that the journal's name still leads to the inode it locked (st_dev and
** st_ino), and starts again if not (a bounded number of times).
**
** Names. The path is resolved (realpath) once the file is open, and all later work is
** done beside the real file: compaction's temp file and its rename go to the real file's
** folder, so a symbolic link stays a link and compaction rewrites the file it points to.
** Opening through a dangling link creates the file it names (O_CREAT without O_EXCL:
** O_EXCL refuses any existing link). A hard link is another matter: it shares the inode
** (so the lock covers it), but compaction replaces one name only, and the names would
** from then on hold different journals, each missing what was written through the other.
** So a journal with more than one name (st_nlink > 1) is refused at open, with a message
** that says why; a link made while the journal is open makes compaction refuse (the file
** then grows, whole, under both names) instead of splitting it.
**
** OFD locks do not report their owner's pid (F_OFD_GETLK gives -1), so the holder writes
** its pid into REAL.lock, beside the real file, for a refusal to name it. That file is
** information, not the lock. The holder also locks it, for one reason only: dh3 versions
** before this one locked PATH.lock and nothing else, and one of them still running on the
** journal (given its real name) keeps this one out. A PATH.lock left by an older version
** is reused as it is: its content is overwritten by the next holder.
**
** A read-only opening (mode "read", for `dh3 pending`) takes no lock, creates nothing,
** and has no method that writes: it reads what is there while a writer may hold it.
**
** Every descriptor is O_CLOEXEC: a child started by io.popen or os.execute must not
** inherit the lock (with an OFD lock it would keep the journal locked after we die).
*/
/* F_OFD_SETLK, O_DIRECTORY, O_NOFOLLOW, realpath (glibc); fdatasync, fchmod: POSIX */
#define _GNU_SOURCE
#include "dh3.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DH3_JOURNAL_NOTE_SUFFIX ".lock"    /* the holder's pid, beside the real file */
#define DH3_JOURNAL_TEMP_SUFFIX ".compact" /* one name is enough: we hold the lock */
#define DH3_JOURNAL_TRIES 8 /* opens that found the file replaced under them, at most */

typedef struct {
  int fd;     /* the journal, O_RDWR | O_APPEND (O_RDONLY when read-only); -1 when closed */
  int notefd; /* REAL.lock, the holder's pid; -1 when none (read-only, or it cannot be opened) */
  int closed;
  int read_only;
  char *path; /* as given, for messages (owned) */
  char *real; /* the file the path named when it was opened, links resolved (owned) */
  char *temp; /* REAL.compact (owned) */
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

/* The pid the holder wrote into the note beside the real file `real`, or 0 when there is
   none (yet). Opens it read-only and follows no link: the note is only ever information. */
static long dh3_journal_holder(const char *real) {
  char buf[32], *end, *note = dh3_journal_concat(real, DH3_JOURNAL_NOTE_SUFFIX);
  ssize_t n;
  long pid;
  int fd;
  if (note == NULL) return 0;
  fd = dh3_journal_open_regular(note, O_RDONLY | O_NOFOLLOW, 0);
  free(note);
  if (fd < 0) return 0;
  n = pread(fd, buf, sizeof(buf) - 1, 0);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  pid = strtol(buf, &end, 10);
  return (end != buf && pid > 0) ? pid : 0;
}

/* Whether fd is the file `real` names now: 1 yes, 0 no (replaced, removed), -1 with errno
   set when that cannot be known. *links: the file's link count. */
static int dh3_journal_same_file(int fd, const char *real, nlink_t *links) {
  struct stat held, named;
  if (fstat(fd, &held) != 0) return -1;
  *links = held.st_nlink;
  if (stat(real, &named) != 0) return errno == ENOENT ? 0 : -1;
  return held.st_dev == named.st_dev && held.st_ino == named.st_ino;
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

static dh3_journal *dh3_journal_check_writable(lua_State *L) {
  dh3_journal *j = dh3_journal_check(L);
  if (j->read_only) luaL_error(L, "dh3.journal_file: the journal %s is open for reading only", j->path);
  return j;
}

/* The one close behind close, __gc and __close; idempotent. Closing the journal's
   descriptor is what releases the lock; the note's goes first, so that the next holder,
   who can lock the journal only after this, finds the note free. */
static void dh3_journal_close(dh3_journal *j) {
  if (j->closed) return;
  j->closed = 1;
  if (j->notefd >= 0) close(j->notefd);
  if (j->fd >= 0) close(j->fd);
  j->fd = j->notefd = -1;
  free(j->path);
  free(j->real);
  free(j->temp);
  j->path = j->real = j->temp = NULL;
}

/* Undoes an open that failed (the userdata's close frees the rest): nil, message,
   reason ("locked", "links", "missing" or "io"). */
static int dh3_journal_fail(lua_State *L, dh3_journal *j, const char *reason,
                            const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, reason);
  dh3_journal_close(j);
  return 3;
}

/* The refusal of a journal someone else holds, naming them when the note does. A file
   with hard links may be held under another name, whose note this one cannot find (and
   this name's note may be an old one): it is said so, with no pid. */
static int dh3_journal_refuse(lua_State *L, dh3_journal *j, const char *real) {
  struct stat st;
  long holder;
  if (fstat(j->fd, &st) == 0 && st.st_nlink > 1)
    return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
      "the journal %s is in use (it has %d names, hard links: it may be open under another; "
      "dh3 refuses such a journal anyway)", j->path, (int)st.st_nlink));
  holder = dh3_journal_holder(real);
  if (holder == (long)getpid())
    return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
      "the journal %s is in use by this process (%d): it is already open", j->path, (int)holder));
  if (holder > 0)
    return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
      "the journal %s is in use by process %d", j->path, (int)holder));
  return dh3_journal_fail(L, j, "locked", lua_pushfstring(L,
    "the journal %s is in use by another process", j->path));
}

/* Opens the journal at j->path for writing, creating it when absent: the descriptor, or
   -1 with errno set. *created: whether it had to be created. */
static int dh3_journal_open_file(const char *path, int *created) {
  int fd = dh3_journal_open_regular(path, O_RDWR | O_APPEND, 0);
  *created = 0;
  if (fd < 0 && errno == ENOENT) {
    /* no O_EXCL: through a dangling symbolic link it would fail on the link itself, where
       O_CREAT alone creates the file the link names */
    fd = dh3_journal_open_regular(path, O_RDWR | O_APPEND | O_CREAT, 0600);
    *created = fd >= 0;
  }
  return fd;
}

/* Opens, locks and checks the journal for writing (see the top of this file). 0 when
   done, else the number of results of a failure, already pushed. */
static int dh3_journal_open_locked(lua_State *L, dh3_journal *j) {
  char pid[32];
  int tries, created = 0, err, same;
  nlink_t links = 1;
  for (tries = 1;; tries++) {
    j->fd = dh3_journal_open_file(j->path, &created);
    if (j->fd < 0)
      return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
        "cannot open the journal %s: %s", j->path, strerror(errno)));
    /* resolved after the open: it names the file we have, or the check below sees it not */
    j->real = realpath(j->path, NULL);
    if (j->real == NULL) {
      err = errno;
      if (err != ENOENT || tries >= DH3_JOURNAL_TRIES)
        return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
          "cannot resolve the journal's path %s: %s", j->path, strerror(err)));
      close(j->fd);
      j->fd = -1;
      continue; /* removed or replaced since the open */
    }
    err = dh3_journal_lock(j->fd);
    if (err == EAGAIN || err == EACCES) return dh3_journal_refuse(L, j, j->real);
    if (err != 0)
      return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
        "cannot lock the journal %s: %s", j->path, strerror(err)));
    /* the lock is ours; is the file still the journal? A compaction by the holder we were
       racing may have renamed a new one over it (and released this one's lock since). */
    same = dh3_journal_same_file(j->fd, j->real, &links);
    if (same < 0)
      return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
        "cannot check the journal %s: %s", j->path, strerror(errno)));
    if (same) break;
    if (tries >= DH3_JOURNAL_TRIES)
      return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
        "the journal %s was replaced %d times while being opened", j->path, tries));
    close(j->fd); /* releases that lock */
    j->fd = -1;
    free(j->real);
    j->real = NULL;
  }
  if (links > 1)
    return dh3_journal_fail(L, j, "links", lua_pushfstring(L,
      "the journal %s has %d names (hard links): compaction would leave the other names with "
      "an old journal; remove the other links, or give dh3 a copy", j->path, (int)links));
  if (created && (err = dh3_journal_sync_dir(j->real)) != 0)
    return dh3_journal_fail(L, j, "io", lua_pushfstring(L,
      "cannot make the new journal %s durable: %s", j->path, strerror(err)));
  j->temp = dh3_journal_concat(j->real, DH3_JOURNAL_TEMP_SUFFIX);
  if (j->temp == NULL) return dh3_journal_fail(L, j, "io", "out of memory");

  /* the note: best effort, but an older dh3 holding it (its only lock) keeps us out */
  {
    char *note = dh3_journal_concat(j->real, DH3_JOURNAL_NOTE_SUFFIX);
    if (note == NULL) return dh3_journal_fail(L, j, "io", "out of memory");
    j->notefd = dh3_journal_open_regular(note, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);
    free(note);
  }
  if (j->notefd >= 0) {
    err = dh3_journal_lock(j->notefd);
    if (err == EAGAIN || err == EACCES) return dh3_journal_refuse(L, j, j->real);
    snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(j->notefd, 0) == 0 && pwrite(j->notefd, pid, strlen(pid), 0) < 0) {
      /* nothing to undo: a refused opener then says "another process" */
    }
  }

  /* a compaction that a crash interrupted left its temp file; ours to remove, under the lock */
  (void)unlink(j->temp);
  return 0;
}

/* core.journal(path [, mode]) -> journal_file | nil, message, reason. mode "write" (the
   default): locked, created when absent (its new name made durable). mode "read": no
   lock, nothing created (reason "missing" when there is no file), and no writing method. */
int dh3_journal_new(lua_State *L) {
  static const char *const modes[] = {"write", "read", NULL};
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  int read_only = luaL_checkoption(L, 2, "write", modes) == 1;
  int ud, rc;
  dh3_journal *j;
  luaL_argcheck(L, len > 0 && strlen(path) == len, 1, "a path without NUL bytes expected");

  j = (dh3_journal *)lua_newuserdatauv(L, sizeof(*j), 0);
  ud = lua_gettop(L);
  memset(j, 0, sizeof(*j));
  j->fd = j->notefd = -1;
  j->read_only = read_only;
  luaL_setmetatable(L, DH3_JOURNAL_MT); /* from here __gc frees whatever is attached */
  j->path = dh3_journal_concat(path, "");
  if (j->path == NULL) return dh3_journal_fail(L, j, "io", "out of memory");

  if (read_only) {
    j->fd = dh3_journal_open_regular(path, O_RDONLY, 0);
    if (j->fd < 0) {
      int err = errno;
      return dh3_journal_fail(L, j, err == ENOENT ? "missing" : "io", lua_pushfstring(L,
        "cannot open the journal %s: %s", path, strerror(err)));
    }
  } else if ((rc = dh3_journal_open_locked(L, j)) != 0) {
    return rc;
  }
  lua_settop(L, ud);
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

/* file:read() -> string | nil, message: the whole file, through the descriptor (so it is
   the file that is locked, whatever its name leads to now). */
static int dh3_journal_read(lua_State *L) {
  dh3_journal *j = dh3_journal_check(L);
  luaL_Buffer b;
  off_t at = 0;
  luaL_buffinit(L, &b);
  for (;;) {
    char *p = luaL_prepbuffer(&b);
    ssize_t n = pread(j->fd, p, LUAL_BUFFERSIZE, at);
    if (n < 0) {
      if (errno == EINTR) continue;
      return dh3_journal_error(L, "cannot read the journal", j->path, errno);
    }
    if (n == 0) break;
    luaL_addsize(&b, (size_t)n);
    at += n;
  }
  luaL_pushresult(&b);
  return 1;
}

/* file:append(s) -> true | nil, message. s (whole records) is on the disk when this
   returns true. On failure the file is cut back to its size before: a half-written
   record must not sit in the middle of the journal once later records follow it. */
static int dh3_journal_append(lua_State *L) {
  dh3_journal *j = dh3_journal_check_writable(L);
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
  dh3_journal *j = dh3_journal_check_writable(L);
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
   REAL.compact, is synced and locked, renamed over REAL (the real file, so a symbolic
   link to it stays a link), and the folder is synced; a crash at any point leaves either
   the old journal or the new one. The lock never lapses: the new file is locked before
   the rename and the old one closed after it. The temp file's descriptor becomes the
   journal's: opening REAL again could fail after the rename, and appends would then go
   to the old, unlinked file. The mode of the old file is kept, so a chmod of the user
   survives compaction. A journal that got a second name (a hard link) since it was
   opened is not rewritten: that would split it in two. */
static int dh3_journal_rewrite(lua_State *L) {
  dh3_journal *j = dh3_journal_check_writable(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  struct stat st;
  int fd, err;
  if (fstat(j->fd, &st) != 0) return dh3_journal_error(L, "cannot read the mode of", j->path, errno);
  if (st.st_nlink > 1) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot rewrite the journal %s: it has %d names (hard links) now",
                    j->path, (int)st.st_nlink);
    return 2;
  }
  (void)unlink(j->temp); /* what a failed rewrite left; O_EXCL below trusts no leftover */
  fd = dh3_journal_open_regular(j->temp, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
  if (fd < 0) return dh3_journal_error(L, "cannot create", j->temp, errno);
  err = dh3_journal_write_all(fd, s, len);
  if (err == 0 && fchmod(fd, st.st_mode & 07777) != 0) err = errno;
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (err == 0) err = dh3_journal_lock(fd);
  if (err == 0 && rename(j->temp, j->real) != 0) err = errno;
  if (err != 0) {
    close(fd);
    unlink(j->temp);
    return dh3_journal_error(L, "cannot rewrite the journal", j->path, err);
  }
  close(j->fd); /* releases the old file's lock: the new one is held already */
  j->fd = fd;
  /* the rename happened; a failed folder sync can only be reported */
  if ((err = dh3_journal_sync_dir(j->real)) != 0)
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
    lua_pushfstring(L, "dh3.journal_file (%p, %s%s)", (void *)j, j->path,
                    j->read_only ? ", read-only" : "");
  }
  return 1;
}
/* }====================================================================== */

static const luaL_Reg dh3_journal_methods[] = {
  {"read", dh3_journal_read},
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
