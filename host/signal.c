/* signal.c - drv.signal: signals handled by waiting for them. A watcher blocks
 * the signals it names and reads them from a signalfd, so a TERM becomes an
 * event a loop polls or a wait wakes on (its fd, given to drv.proc, drv.lock
 * and drv.fetch as interrupt_fd, stops their waits), never a handler that runs
 * in the middle of something. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "drv.h"

#define WATCHER_MT "drv.signal.watcher"

struct watcher {
	int fd;			/* signalfd, -1 once closed */
	sigset_t old;		/* the mask before */
};

static struct watcher *sig_check(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, WATCHER_MT);
}

static struct watcher *sig_check_open(lua_State *L, int idx)
{
	struct watcher *w = sig_check(L, idx);

	luaL_argcheck(L, w->fd >= 0, idx, "watcher is closed");
	return w;
}

/***
 * Stop watching: the signal mask is restored, and the signals
 * still pending are discarded (they were this watcher's: a second TERM during a
 * stop must not kill the process once the mask is restored). Also `__gc`, `__close`.
 * @function watcher:close
 */
static int sig_close(lua_State *L)
{
	struct watcher *w = sig_check(L, 1);
	struct signalfd_siginfo si;

	if (w->fd < 0)
		return 0;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si))
		;
	close(w->fd);
	w->fd = -1;
	pthread_sigmask(SIG_SETMASK, &w->old, NULL);
	return 0;
}

/* Read one pending signal; its name, or NULL when none within timeout_ms. */
static const char *sig_read(struct watcher *w, int timeout_ms)
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
 * @function watch
 * @tparam table names `{ "TERM", "INT", "HUP" }`
 * @treturn[1] watcher: `:wait([timeout])`, `:poll()`, `:fd()`, `:close()` (discards the signals still pending,
 *   then restores the mask); closed by `__close`/`__gc` too
 * @treturn[2] nil, string message, string errno
 * @see signalfd(2)
 */
static int sig_watch(lua_State *L)
{
	struct watcher *w;
	sigset_t set;
	lua_Integer n;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = luaL_len(L, 1);
	luaL_argcheck(L, n > 0, 1, "no signals named");
	sigemptyset(&set);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, 1, i);
		sigaddset(&set, drv_checksignal(L, lua_gettop(L)));
		lua_pop(L, 1);
	}
	w = lua_newuserdatauv(L, sizeof(*w), 0);
	w->fd = -1;
	luaL_setmetatable(L, WATCHER_MT);
	if (pthread_sigmask(SIG_BLOCK, &set, &w->old) != 0)
		return drv_errno_fail(L, "sigprocmask");
	w->fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (w->fd < 0) {
		int err = errno;

		pthread_sigmask(SIG_SETMASK, &w->old, NULL);
		errno = err;
		return drv_errno_fail(L, "signalfd");
	}
	return 1;
}

/***
 * Wait for one of the signals.
 * @function watcher:wait
 * @tparam[opt] number timeout seconds (none: forever)
 * @treturn string|nil the signal's name without "SIG" ("TERM"), or nil at the timeout
 */
static int sig_wait(lua_State *L)
{
	struct watcher *w = sig_check_open(L, 1);
	lua_Number timeout = luaL_optnumber(L, 2, -1);
	const char *name = sig_read(w, timeout < 0 ? -1 : (int)(timeout * 1000));

	if (!name)
		return 0;
	lua_pushstring(L, name);
	return 1;
}

/***
 * A signal that has arrived, without waiting; nil if none.
 * @function watcher:poll
 * @treturn string|nil
 */
static int sig_poll(lua_State *L)
{
	const char *name = sig_read(sig_check_open(L, 1), 0);

	if (!name)
		return 0;
	lua_pushstring(L, name);
	return 1;
}

/***
 * The signalfd: readable while a signal is pending (an `interrupt_fd`).
 * @function watcher:fd
 * @treturn integer
 */
static int sig_fd(lua_State *L)
{
	lua_pushinteger(L, sig_check_open(L, 1)->fd);
	return 1;
}

static int sig_tostring(lua_State *L)
{
	lua_pushstring(L, sig_check(L, 1)->fd >= 0 ? WATCHER_MT " (open)" : WATCHER_MT " (closed)");
	return 1;
}

static const luaL_Reg sig_methods[] = {
	{ "wait", sig_wait },
	{ "poll", sig_poll },
	{ "fd", sig_fd },
	{ "close", sig_close },
	{ NULL, NULL }
};

static const luaL_Reg sig_meta[] = {
	{ "__gc", sig_close },
	{ "__close", sig_close },
	{ "__tostring", sig_tostring },
	{ NULL, NULL }
};

static const luaL_Reg sig_funcs[] = {
	{ "watch", sig_watch },
	{ NULL, NULL }
};

int luaopen_drv_signal(lua_State *L)
{
	drv_newclass(L, WATCHER_MT, sig_methods, sig_meta);
	luaL_newlib(L, sig_funcs);
	return 1;
}
