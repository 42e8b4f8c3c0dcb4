/* lock.c - drv.lock: host-wide locks, flock(2) on a file that names its holder
 * ("pid 412 (ubuntu-ofed 25.10) since 2026-12-01T15:44:44Z"), so that a waiter,
 * or a second instance refused, can say whom it waits for. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "drv.h"

#define LOCK_MT "drv.lock"
#define LOCK_POLL_MS 100	/* between two tries while waiting */

struct lock {
	int fd;			/* -1 once released */
	int owner;		/* holds it exclusively and wrote the holder text */
	int remove;		/* unlink the file on release (held exclusively) */
	char path[];
};

static struct lock *lock_check(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LOCK_MT);
}

static void lock_release(struct lock *l)
{
	if (l->fd < 0)
		return;
	if (l->owner && l->remove)
		unlink(l->path);	/* while held: a waiter then finds it gone and opens anew */
	else if (l->owner && ftruncate(l->fd, 0) < 0) {
		/* the holder text is advisory */
	}
	flock(l->fd, LOCK_UN);
	close(l->fd);
	l->fd = -1;
}

/***
 * Let go of the lock (and remove its file when it was taken with `remove`);
 * also at collection and `__close`: `local l <close> = lock.acquire(path)`.
 * @function lock:unlock
 */
static int lock_gc(lua_State *L)
{
	lock_release(lock_check(L, 1));
	return 0;
}

/***
 * The lock file's path.
 * @function lock:path
 * @treturn string
 */
static int lock_path(lua_State *L)
{
	lua_pushstring(L, lock_check(L, 1)->path);
	return 1;
}

static int lock_tostring(lua_State *L)
{
	struct lock *l = lock_check(L, 1);

	lua_pushfstring(L, LOCK_MT " (%s, %s)", l->path, l->fd >= 0 ? "held" : "released");
	return 1;
}

/* What the holder wrote into the lock file, trimmed, or "an unknown process". */
static void lock_holder(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);

	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		n--;
	if (n <= 0)
		snprintf(buf, size, "an unknown process");
	else
		buf[n] = '\0';
}

/* Is the locked file still the one at the path (not removed by its last holder)? */
static int lock_is_current(const struct lock *l)
{
	struct stat a, b;

	return fstat(l->fd, &a) == 0 && stat(l->path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static void lock_write_holder(int fd, const char *owner)
{
	char buf[512], when[96];
	int n;

	drv_utc((long long)time(NULL), when, sizeof(when));
	n = snprintf(buf, sizeof(buf), "pid %d (%s) since %s\n", (int)getpid(), owner, when);
	if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) < 0) {
		/* advisory only */
	}
}

/* Wait LOCK_POLL_MS, or less when interrupt_fd becomes readable: 1 if it is. */
static int lock_pause(int interrupt_fd)
{
	struct pollfd pfd = { .fd = interrupt_fd, .events = POLLIN };

	return poll(&pfd, 1, LOCK_POLL_MS) > 0;
}

/***
 * Take a host-wide lock: flock(2) on path. The holder's pid and owner text are
 * written into the file so a waiter can name it.
 * @function acquire
 * @tparam string path
 * @tparam[opt] table opts `{ timeout = seconds (nil: forever, 0: try once), shared = false,
 *   owner = "text", on_wait = function(holder) (called once if it must wait), remove = false (unlink
 *   the file on unlock, so that nothing is left behind; every user of the path must pass it),
 *   interrupt_fd = fd (a wait ends once it is readable, e.g. a drv.signal watcher's: the fd is not read) }`
 * @treturn[1] lock: `:unlock()`, `:path()`; released by `__close`/`__gc` too
 * @treturn[2] nil, "<path>: held by pid N (owner) since T", EAGAIN (timeout 0) | ETIMEDOUT;
 *   nil, "<path>: interrupted while waiting for pid N (owner) since T", EINTR
 * @see flock(2)
 */
static int lock_acquire(lua_State *L)
{
	size_t len;
	const char *path = luaL_checklstring(L, 1, &len);
	int opts = drv_opttable(L, 2);
	lua_Number timeout = drv_optfield_number(L, opts, "timeout", -1);
	int shared = drv_optfield_boolean(L, opts, "shared", 0);
	int remove = drv_optfield_boolean(L, opts, "remove", 0);
	const char *owner = drv_optfield_string(L, opts, "owner", "drvrun");
	int interrupt_fd = (int)drv_optfield_integer(L, opts, "interrupt_fd", -1);
	int op = (shared ? LOCK_SH : LOCK_EX) | LOCK_NB;
	double deadline = timeout >= 0 ? drv_clock(CLOCK_MONOTONIC) + timeout : -1;
	char holder[512];
	int waited = 0;
	struct lock *l;

	if (opts && lua_getfield(L, opts, "on_wait") != LUA_TNIL)
		luaL_argcheck(L, lua_isfunction(L, -1), 2, "field 'on_wait': function expected");
	else if (opts)
		lua_pop(L, 1);
	l = lua_newuserdatauv(L, sizeof(*l) + len + 1, 0);
	l->fd = -1;
	l->owner = 0;
	l->remove = remove && !shared;
	memcpy(l->path, path, len + 1);
	luaL_setmetatable(L, LOCK_MT);
	for (;;) {
		l->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (l->fd < 0)
			return drv_errno_fail(L, path);
		while (flock(l->fd, op) < 0) {
			if (errno != EWOULDBLOCK && errno != EINTR) {
				int err = errno;

				lock_release(l);
				return drv_fail(L, err, "%s: %s", path, strerror(err));
			}
			lock_holder(l->fd, holder, sizeof(holder));
			if (deadline >= 0 && drv_clock(CLOCK_MONOTONIC) >= deadline) {
				lock_release(l);
				return drv_fail(L, timeout == 0 ? EWOULDBLOCK : ETIMEDOUT, "%s: held by %s%s",
						path, holder, timeout > 0 ? " (timed out waiting)" : "");
			}
			if (!waited++ && opts && lua_getfield(L, opts, "on_wait") == LUA_TFUNCTION) {
				lua_pushstring(L, holder);
				lua_call(L, 1, 0);
			}
			if (lock_pause(interrupt_fd)) {
				lock_release(l);
				return drv_fail(L, EINTR, "%s: interrupted while waiting for %s", path, holder);
			}
		}
		if (!l->remove || lock_is_current(l))
			break;
		close(l->fd);	/* its holder removed it: take the file that is there now */
		l->fd = -1;
	}
	if (!shared) {
		lock_write_holder(l->fd, owner);
		l->owner = 1;
	}
	return 1;
}

static const luaL_Reg lock_methods[] = {
	{ "unlock", lock_gc },
	{ "path", lock_path },
	{ NULL, NULL }
};

static const luaL_Reg lock_meta[] = {
	{ "__gc", lock_gc },
	{ "__close", lock_gc },
	{ "__tostring", lock_tostring },
	{ NULL, NULL }
};

static const luaL_Reg lock_funcs[] = {
	{ "acquire", lock_acquire },
	{ NULL, NULL }
};

int luaopen_drv_lock(lua_State *L)
{
	drv_newclass(L, LOCK_MT, lock_methods, lock_meta);
	luaL_newlib(L, lock_funcs);
	return 1;
}
