/* sys.c - drv.sys: the small facts of the system and this process: uname, boot
 * id, hostname, pid, CPUs, clocks, UTC time, sleep, unbuffered writes, isatty,
 * kill. Host-wide locks are drv.lock, waiting for signals drv.signal. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "drv.h"

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
 * @treturn[2] nil, string message, string errno
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

/***
 * The host's name (gethostname(2)).
 * @function hostname
 * @treturn[1] string
 * @treturn[2] nil, string message, string errno
 */
static int sys_hostname(lua_State *L)
{
	char buf[256];

	if (gethostname(buf, sizeof(buf)) < 0)
		return drv_errno_fail(L, "gethostname");
	buf[sizeof(buf) - 1] = '\0';
	lua_pushstring(L, buf);
	return 1;
}

/***
 * This process's id.
 * @function getpid
 * @treturn integer
 */
static int sys_getpid(lua_State *L)
{
	lua_pushinteger(L, getpid());
	return 1;
}

/***
 * This process's effective user id (0: root).
 * @function geteuid
 * @treturn integer
 */
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

/***
 * A time as UTC, in the form logs and ready files use.
 * @function utc
 * @tparam[opt] integer t seconds since the epoch (default: now)
 * @treturn string `2026-12-01T15:44:44Z`
 */
static int sys_utc(lua_State *L)
{
	char buf[96]; /* room for any year, for the compiler's format check */

	drv_utc(luaL_opt(L, luaL_checkinteger, 1, (lua_Integer)time(NULL)), buf, sizeof(buf));
	lua_pushstring(L, buf);
	return 1;
}

/***
 * Sleep (not interrupted by handled signals: they wait in their watcher), or
 * until fd becomes readable (an interrupt_fd: it is not read).
 * @function sleep
 * @tparam number seconds
 * @tparam[opt] integer fd
 * @treturn boolean true when fd became readable before the time was up
 */
static int sys_sleep(lua_State *L)
{
	lua_Number s = luaL_checknumber(L, 1);
	struct pollfd pfd = { .fd = (int)luaL_optinteger(L, 2, -1), .events = POLLIN };
	double end = drv_clock(CLOCK_MONOTONIC) + s, left;
	int woken = 0;

	luaL_argcheck(L, s >= 0, 1, "negative duration");
	while (!woken && (left = end - drv_clock(CLOCK_MONOTONIC)) > 0)
		woken = poll(&pfd, 1, (int)fmin(ceil(left * 1000), INT_MAX)) > 0;
	lua_pushboolean(L, woken);
	return 1;
}

/***
 * Write all of data to descriptor fd with write(2), unbuffered: a log line in
 * one call (io.stderr goes through stdio).
 * @function write
 * @tparam integer fd
 * @tparam string data
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
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
 * @treturn[2] nil, string message, string errno
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
	{ NULL, NULL }
};

int luaopen_drv_sys(lua_State *L)
{
	luaL_newlib(L, sys_funcs);
	return 1;
}
