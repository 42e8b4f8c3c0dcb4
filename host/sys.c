/* sys.c - drv.sys: the system facts and process-wide services recipes need:
 * uname, boot id, clocks, a host-wide flock, and waiting for signals. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "drv.h"

#define LOCK_MT "drv.sys.lock"
#define SIGNALS_MT "drv.sys.signals"

/***
 * uname(2) as a table.
 * @function uname
 * @treturn table `{ sysname, nodename, release, version, machine }`
 * @see uname(2)
 */
static int sys_uname(lua_State *L)
{
	struct utsname u;

	if (uname(&u) < 0)
		return drv_errno_fail(L, "uname");
	lua_createtable(L, 0, 5);
	lua_pushstring(L, u.sysname);
	lua_setfield(L, -2, "sysname");
	lua_pushstring(L, u.nodename);
	lua_setfield(L, -2, "nodename");
	lua_pushstring(L, u.release);
	lua_setfield(L, -2, "release");
	lua_pushstring(L, u.version);
	lua_setfield(L, -2, "version");
	lua_pushstring(L, u.machine);
	lua_setfield(L, -2, "machine");
	return 1;
}

/***
 * The kernel's boot id (changes at every boot).
 * @function boot_id
 * @treturn[1] string
 * @treturn[2] nil, string message, integer errno
 */
static int sys_boot_id(lua_State *L)
{
	static const char path[] = "/proc/sys/kernel/random/boot_id";
	char buf[64];

	if (drv_read_attr(path, buf, sizeof(buf)) < 0)
		return drv_errno_fail(L, path);
	lua_pushstring(L, buf);
	return 1;
}

static int sys_hostname(lua_State *L)
{
	char buf[256];

	if (gethostname(buf, sizeof(buf)) < 0)
		return drv_errno_fail(L, "gethostname");
	buf[sizeof(buf) - 1] = '\0';
	lua_pushstring(L, buf);
	return 1;
}

static int sys_getpid(lua_State *L)
{
	lua_pushinteger(L, getpid());
	return 1;
}

static int sys_geteuid(lua_State *L)
{
	lua_pushinteger(L, geteuid());
	return 1;
}

/***
 * CPUs this process may run on (sched_getaffinity), at least 1.
 * @function nproc
 * @treturn integer
 */
static int sys_nproc(lua_State *L)
{
	cpu_set_t set;
	long n = 0;

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		n = CPU_COUNT(&set);
	if (n <= 0)
		n = sysconf(_SC_NPROCESSORS_ONLN);
	lua_pushinteger(L, n > 0 ? n : 1);
	return 1;
}

/***
 * Seconds on the monotonic clock (for durations).
 * @function monotonic
 * @treturn number
 */
static int sys_monotonic(lua_State *L)
{
	lua_pushnumber(L, drv_clock(CLOCK_MONOTONIC));
	return 1;
}

/***
 * Seconds since the epoch, with fractions.
 * @function time
 * @treturn number
 */
static int sys_time(lua_State *L)
{
	lua_pushnumber(L, drv_clock(CLOCK_REALTIME));
	return 1;
}

/* t as UTC, "2026-12-01T15:44:44Z", by arithmetic (days to civil date, after
 * H. Hinnant): gmtime and strftime load the time zone (tzset reads
 * /etc/localtime) for a time they write in UTC. */
static void sys_utc_string(long long t, char *buf, size_t size)
{
	long long days = (t >= 0 ? t : t - 86399) / 86400, secs = t - days * 86400;
	long long era = (days + 719468 >= 0 ? days + 719468 : days + 719468 - 146096) / 146097;
	long long doe = days + 719468 - era * 146097;
	long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	long long mp = (5 * doy + 2) / 153, month = mp < 10 ? mp + 3 : mp - 9;

	snprintf(buf, size, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lldZ", yoe + era * 400 + (month <= 2),
		 month, doy - (153 * mp + 2) / 5 + 1, secs / 3600, secs / 60 % 60, secs % 60);
}

/***
 * A time as UTC, in the form logs and ready files use.
 * @function utc
 * @tparam[opt] integer t seconds since the epoch (default: now)
 * @treturn string `2026-12-01T15:44:44Z`
 */
static int sys_utc(lua_State *L)
{
	char buf[96]; /* room for any year, for the compiler's format check */

	sys_utc_string(luaL_opt(L, luaL_checkinteger, 1, (lua_Integer)time(NULL)), buf, sizeof(buf));
	lua_pushstring(L, buf);
	return 1;
}

/***
 * Sleep (not interrupted by handled signals: they wait in their watcher).
 * @function sleep
 * @tparam number seconds
 */
static int sys_sleep(lua_State *L)
{
	lua_Number s = luaL_checknumber(L, 1);
	struct timespec ts;

	luaL_argcheck(L, s >= 0, 1, "negative duration");
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	return 0;
}

/***
 * Write all of data to descriptor fd with write(2), unbuffered: a log line in
 * one call (io.stderr goes through stdio).
 * @function write
 * @tparam integer fd
 * @tparam string data
 * @treturn[1] true
 * @treturn[2] nil, string message, integer errno
 */
static int sys_write(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);

	if (drv_write_all(fd, data, len) < 0)
		return drv_errno_fail(L, "write");
	return drv_ok(L);
}

/***
 * Whether a file or descriptor is a terminal.
 * @function isatty
 * @tparam file|integer f io.stderr, or a descriptor number
 * @treturn boolean
 */
static int sys_isatty(lua_State *L)
{
	int fd;

	if (lua_isinteger(L, 1)) {
		fd = (int)lua_tointeger(L, 1);
	} else {
		luaL_Stream *s = luaL_checkudata(L, 1, LUA_FILEHANDLE);

		luaL_argcheck(L, s->closef != NULL, 1, "file is closed");
		fd = fileno(s->f);
	}
	lua_pushboolean(L, isatty(fd));
	return 1;
}

/***
 * Send a signal to a process.
 * @function kill
 * @tparam integer pid
 * @tparam string|integer signal "TERM", "SIGKILL", 9 ...
 * @treturn[1] true
 * @treturn[2] nil, string message, integer errno
 * @see kill(2)
 */
static int sys_kill(lua_State *L)
{
	lua_Integer pid = luaL_checkinteger(L, 1);
	int sig = drv_checksignal(L, 2);

	if (kill((pid_t)pid, sig) < 0)
		return drv_fail(L, errno, "kill %d: %s", (int)pid, strerror(errno));
	return drv_ok(L);
}

/* ---- signals ------------------------------------------------------------ */

struct signals {
	int fd;			/* signalfd, -1 once closed */
	sigset_t set;		/* what this watcher blocked */
	sigset_t old;		/* the mask before */
};

/* The most recent open watcher, for sys.pending_signal() and lock waits. */
static struct signals *current_signals;

static struct signals *sig_check(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, SIGNALS_MT);
}

/* Discards the signals still pending: they were this watcher's (a second TERM
 * during a stop must not kill the process once the mask is restored). */
static void sig_release(struct signals *w)
{
	struct signalfd_siginfo si;

	if (w->fd < 0)
		return;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si))
		;
	close(w->fd);
	w->fd = -1;
	pthread_sigmask(SIG_SETMASK, &w->old, NULL);
	if (current_signals == w)
		current_signals = NULL;
}

static int sig_gc(lua_State *L)
{
	sig_release(sig_check(L, 1));
	return 0;
}

/* Read one pending signal; its name, or NULL when none within timeout_ms. */
static const char *sig_read(struct signals *w, int timeout_ms)
{
	struct pollfd pfd = { .fd = w->fd, .events = POLLIN };
	struct signalfd_siginfo si;
	int rc;

	do
		rc = poll(&pfd, 1, timeout_ms);
	while (rc < 0 && errno == EINTR);
	if (rc <= 0)
		return NULL;
	if (read(w->fd, &si, sizeof(si)) != sizeof(si))
		return NULL;
	return sigabbrev_np((int)si.ssi_signo);
}

/***
 * Handle signals by waiting for them: block them and read them from a signalfd.
 * Children started by drv.proc get a clean signal mask.
 * @function signals
 * @tparam table names `{ "TERM", "INT", "HUP" }`
 * @treturn[1] watcher: `:wait([timeout])`, `:poll()`, `:fd()`, `:close()` (discards the signals still pending,
 *   then restores the mask)
 * @treturn[2] nil, string message, integer errno
 * @see signalfd(2)
 */
static int sys_signals(lua_State *L)
{
	struct signals *w;
	lua_Integer n;

	luaL_checktype(L, 1, LUA_TTABLE);
	w = lua_newuserdatauv(L, sizeof(*w), 0);
	w->fd = -1;
	sigemptyset(&w->set);
	luaL_setmetatable(L, SIGNALS_MT);
	n = luaL_len(L, 1);
	luaL_argcheck(L, n > 0, 1, "no signals named");
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, 1, i);
		sigaddset(&w->set, drv_checksignal(L, lua_gettop(L)));
		lua_pop(L, 1);
	}
	if (pthread_sigmask(SIG_BLOCK, &w->set, &w->old) != 0)
		return drv_errno_fail(L, "sigprocmask");
	w->fd = signalfd(-1, &w->set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (w->fd < 0) {
		int err = errno;

		pthread_sigmask(SIG_SETMASK, &w->old, NULL);
		errno = err;
		return drv_errno_fail(L, "signalfd");
	}
	current_signals = w;
	return 1;
}

/***
 * Wait for one of the signals.
 * @function signals:wait
 * @tparam[opt] number timeout seconds (none: forever)
 * @treturn string|nil the signal's name without "SIG" ("TERM"), or nil at the timeout
 */
static int sig_wait(lua_State *L)
{
	struct signals *w = sig_check(L, 1);
	lua_Number timeout = luaL_optnumber(L, 2, -1);
	const char *name;

	luaL_argcheck(L, w->fd >= 0, 1, "watcher is closed");
	name = sig_read(w, timeout < 0 ? -1 : (int)(timeout * 1000));
	if (!name)
		return 0;
	lua_pushstring(L, name);
	return 1;
}

/***
 * A signal that has arrived, without waiting.
 * @function signals:poll
 * @treturn string|nil
 */
static int sig_poll(lua_State *L)
{
	lua_pushnumber(L, 0);
	lua_insert(L, 2);
	lua_settop(L, 2);
	return sig_wait(L);
}

static int sig_fd(lua_State *L)
{
	struct signals *w = sig_check(L, 1);

	luaL_argcheck(L, w->fd >= 0, 1, "watcher is closed");
	lua_pushinteger(L, w->fd);
	return 1;
}

static int sig_tostring(lua_State *L)
{
	struct signals *w = sig_check(L, 1);

	lua_pushstring(L, w->fd >= 0 ? "drv.sys.signals (open)" : "drv.sys.signals (closed)");
	return 1;
}

/***
 * A signal pending on the newest open watcher, without waiting; nil if none.
 * @function pending_signal
 * @treturn string|nil
 */
static int sys_pending_signal(lua_State *L)
{
	const char *name = current_signals ? sig_read(current_signals, 0) : NULL;

	if (!name)
		return 0;
	lua_pushstring(L, name);
	return 1;
}

/* ---- lock --------------------------------------------------------------- */

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

static int lock_gc(lua_State *L)
{
	lock_release(lock_check(L, 1));
	return 0;
}

static int lock_path(lua_State *L)
{
	lua_pushstring(L, lock_check(L, 1)->path);
	return 1;
}

static int lock_tostring(lua_State *L)
{
	struct lock *l = lock_check(L, 1);

	lua_pushfstring(L, "drv.sys.lock (%s, %s)", l->path, l->fd >= 0 ? "held" : "released");
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

	sys_utc_string((long long)time(NULL), when, sizeof(when));
	n = snprintf(buf, sizeof(buf), "pid %d (%s) since %s\n", (int)getpid(), owner, when);
	if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) < 0) {
		/* advisory only */
	}
}

/***
 * Take a host-wide lock: flock(2) on path. The holder's pid and owner text are
 * written into the file so a waiter can name it.
 * @function lock
 * @tparam string path
 * @tparam[opt] table opts `{ timeout = seconds (nil: forever, 0: try once), shared = false,
 *   owner = "text", on_wait = function(holder) (called once if it must wait), remove = false (unlink
 *   the file on unlock, so that nothing is left behind; every user of the path must pass it) }`
 * @treturn[1] lock: `:unlock()`, `:path()`; released by `__close`/`__gc` too
 * @treturn[2] nil, "<path>: held by pid N (owner) since T", EWOULDBLOCK | ETIMEDOUT | EINTR
 * @see flock(2)
 */
static int sys_lock(lua_State *L)
{
	size_t len;
	const char *path = luaL_checklstring(L, 1, &len);
	int opts = drv_opttable(L, 2);
	lua_Number timeout = drv_optfield_number(L, opts, "timeout", -1);
	int shared = drv_optfield_boolean(L, opts, "shared", 0);
	int remove = drv_optfield_boolean(L, opts, "remove", 0);
	const char *owner = drv_optfield_string(L, opts, "owner", "drvrun");
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
			const char *sig;

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
			sig = current_signals ? sig_read(current_signals, 100) : NULL;
			if (!current_signals)
				poll(NULL, 0, 100);
			if (sig) {
				lock_release(l);
				return drv_fail(L, EINTR, "%s: interrupted by SIG%s while waiting for %s", path, sig, holder);
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

static const luaL_Reg sig_methods[] = {
	{ "wait", sig_wait },
	{ "poll", sig_poll },
	{ "fd", sig_fd },
	{ "close", sig_gc },
	{ NULL, NULL }
};

static const luaL_Reg sig_meta[] = {
	{ "__gc", sig_gc },
	{ "__close", sig_gc },
	{ "__tostring", sig_tostring },
	{ NULL, NULL }
};

static const luaL_Reg sys_funcs[] = {
	{ "uname", sys_uname },
	{ "boot_id", sys_boot_id },
	{ "hostname", sys_hostname },
	{ "getpid", sys_getpid },
	{ "geteuid", sys_geteuid },
	{ "nproc", sys_nproc },
	{ "monotonic", sys_monotonic },
	{ "time", sys_time },
	{ "utc", sys_utc },
	{ "sleep", sys_sleep },
	{ "isatty", sys_isatty },
	{ "write", sys_write },
	{ "kill", sys_kill },
	{ "signals", sys_signals },
	{ "pending_signal", sys_pending_signal },
	{ "lock", sys_lock },
	{ NULL, NULL }
};

/* errno numbers by name, for Lua code that compares failure tuples. */
static void sys_push_errno(lua_State *L)
{
	static const struct { const char *name; int value; } errs[] = {
		{ "EPERM", EPERM }, { "ENOENT", ENOENT }, { "ESRCH", ESRCH }, { "EINTR", EINTR },
		{ "EIO", EIO }, { "ENOEXEC", ENOEXEC }, { "EAGAIN", EAGAIN }, { "EACCES", EACCES },
		{ "EBUSY", EBUSY }, { "EEXIST", EEXIST }, { "EXDEV", EXDEV }, { "ENODEV", ENODEV },
		{ "ENOTDIR", ENOTDIR }, { "EISDIR", EISDIR }, { "EINVAL", EINVAL }, { "ENOSPC", ENOSPC },
		{ "EROFS", EROFS }, { "ENAMETOOLONG", ENAMETOOLONG }, { "ENOTEMPTY", ENOTEMPTY },
		{ "EWOULDBLOCK", EWOULDBLOCK }, { "EBADMSG", EBADMSG }, { "EPROTO", EPROTO },
		{ "ETIMEDOUT", ETIMEDOUT }, { "ECONNREFUSED", ECONNREFUSED }, { "ENOKEY", ENOKEY },
		{ "EKEYREJECTED", EKEYREJECTED }, { "ECANCELED", ECANCELED }, { "EOPNOTSUPP", EOPNOTSUPP },
		{ "ENETUNREACH", ENETUNREACH }, { "ERANGE", ERANGE },
	};

	lua_createtable(L, 0, sizeof(errs) / sizeof(errs[0]));
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		lua_pushinteger(L, errs[i].value);
		lua_setfield(L, -2, errs[i].name);
	}
}

int luaopen_drv_sys(lua_State *L)
{
	drv_newclass(L, LOCK_MT, lock_methods, lock_meta);
	drv_newclass(L, SIGNALS_MT, sig_methods, sig_meta);
	luaL_newlib(L, sys_funcs);
	sys_push_errno(L);
	lua_setfield(L, -2, "errno");
	return 1;
}
