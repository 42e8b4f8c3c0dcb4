/* drv.c - helpers shared by the C modules (see drv.h). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "drv.h"

/* The name of every Linux errno, by number (glibc's strerrorname_np is 2.32+;
 * Ubuntu 20.04, a base of the images, has 2.31). Aliases (EWOULDBLOCK,
 * EDEADLOCK, ENOTSUP) take their value's name, as strerrorname_np gives it. */
#define N(e) [e] = #e
static const char *const drv_errnames[] = {
	N(EPERM), N(ENOENT), N(ESRCH), N(EINTR), N(EIO), N(ENXIO), N(E2BIG), N(ENOEXEC), N(EBADF),
	N(ECHILD), N(EAGAIN), N(ENOMEM), N(EACCES), N(EFAULT), N(ENOTBLK), N(EBUSY), N(EEXIST),
	N(EXDEV), N(ENODEV), N(ENOTDIR), N(EISDIR), N(EINVAL), N(ENFILE), N(EMFILE), N(ENOTTY),
	N(ETXTBSY), N(EFBIG), N(ENOSPC), N(ESPIPE), N(EROFS), N(EMLINK), N(EPIPE), N(EDOM),
	N(ERANGE), N(EDEADLK), N(ENAMETOOLONG), N(ENOLCK), N(ENOSYS), N(ENOTEMPTY), N(ELOOP),
	N(ENOMSG), N(EIDRM), N(ECHRNG), N(EL2NSYNC), N(EL3HLT), N(EL3RST), N(ELNRNG), N(EUNATCH),
	N(ENOCSI), N(EL2HLT), N(EBADE), N(EBADR), N(EXFULL), N(ENOANO), N(EBADRQC), N(EBADSLT),
	N(EBFONT), N(ENOSTR), N(ENODATA), N(ETIME), N(ENOSR), N(ENONET), N(ENOPKG), N(EREMOTE),
	N(ENOLINK), N(EADV), N(ESRMNT), N(ECOMM), N(EPROTO), N(EMULTIHOP), N(EDOTDOT), N(EBADMSG),
	N(EOVERFLOW), N(ENOTUNIQ), N(EBADFD), N(EREMCHG), N(ELIBACC), N(ELIBBAD), N(ELIBSCN),
	N(ELIBMAX), N(ELIBEXEC), N(EILSEQ), N(ERESTART), N(ESTRPIPE), N(EUSERS), N(ENOTSOCK),
	N(EDESTADDRREQ), N(EMSGSIZE), N(EPROTOTYPE), N(ENOPROTOOPT), N(EPROTONOSUPPORT),
	N(ESOCKTNOSUPPORT), N(EOPNOTSUPP), N(EPFNOSUPPORT), N(EAFNOSUPPORT), N(EADDRINUSE),
	N(EADDRNOTAVAIL), N(ENETDOWN), N(ENETUNREACH), N(ENETRESET), N(ECONNABORTED),
	N(ECONNRESET), N(ENOBUFS), N(EISCONN), N(ENOTCONN), N(ESHUTDOWN), N(ETOOMANYREFS),
	N(ETIMEDOUT), N(ECONNREFUSED), N(EHOSTDOWN), N(EHOSTUNREACH), N(EALREADY), N(EINPROGRESS),
	N(ESTALE), N(EUCLEAN), N(ENOTNAM), N(ENAVAIL), N(EISNAM), N(EREMOTEIO), N(EDQUOT),
	N(ENOMEDIUM), N(EMEDIUMTYPE), N(ECANCELED), N(ENOKEY), N(EKEYEXPIRED), N(EKEYREVOKED),
	N(EKEYREJECTED), N(EOWNERDEAD), N(ENOTRECOVERABLE), N(ERFKILL), N(EHWPOISON)
};
#undef N

void drv_push_errname(lua_State *L, int err)
{
	if (err > 0 && (size_t)err < sizeof(drv_errnames) / sizeof(drv_errnames[0]) && drv_errnames[err])
		lua_pushstring(L, drv_errnames[err]);
	else
		lua_pushfstring(L, "errno %d", err);
}

int drv_fail(lua_State *L, int err, const char *fmt, ...)
{
	va_list ap;

	lua_pushnil(L);
	va_start(ap, fmt);
	lua_pushvfstring(L, fmt, ap);
	va_end(ap);
	drv_push_errname(L, err);
	return 3;
}

int drv_errno_fail(lua_State *L, const char *what)
{
	int err = errno;

	return drv_fail(L, err, "%s: %s", what, strerror(err));
}

int drv_ok(lua_State *L)
{
	lua_pushboolean(L, 1);
	return 1;
}

void drv_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
		  const luaL_Reg *meta)
{
	if (!luaL_newmetatable(L, tname)) {
		lua_pop(L, 1);
		return;
	}
	if (meta)
		luaL_setfuncs(L, meta, 0);
	if (methods) {
		lua_newtable(L);
		luaL_setfuncs(L, methods, 0);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
}

int drv_opttable(lua_State *L, int arg)
{
	if (lua_isnoneornil(L, arg))
		return 0;
	luaL_checktype(L, arg, LUA_TTABLE);
	return lua_absindex(L, arg);
}

static int push_field(lua_State *L, int idx, const char *key)
{
	if (!idx)
		return 0;
	if (lua_getfield(L, idx, key) == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	return 1;
}

/* The option table's stack index is its argument number. */
static void field_error(lua_State *L, int idx, const char *key, const char *expected)
{
	luaL_argerror(L, idx, lua_pushfstring(L, "field '%s': %s expected, got %s",
					      key, expected, luaL_typename(L, -1)));
}

const char *drv_optfield_string(lua_State *L, int idx, const char *key, const char *def)
{
	const char *s;

	if (!push_field(L, idx, key))
		return def;
	if (lua_type(L, -1) != LUA_TSTRING)
		field_error(L, idx, key, "string");
	s = lua_tostring(L, -1);
	lua_pop(L, 1); /* still referenced by the option table */
	return s;
}

lua_Integer drv_optfield_integer(lua_State *L, int idx, const char *key, lua_Integer def)
{
	lua_Integer v;

	if (!push_field(L, idx, key))
		return def;
	if (!lua_isinteger(L, -1))
		field_error(L, idx, key, "integer");
	v = lua_tointeger(L, -1);
	lua_pop(L, 1);
	return v;
}

lua_Number drv_optfield_number(lua_State *L, int idx, const char *key, lua_Number def)
{
	lua_Number v;

	if (!push_field(L, idx, key))
		return def;
	if (lua_type(L, -1) != LUA_TNUMBER)
		field_error(L, idx, key, "number");
	v = lua_tonumber(L, -1);
	lua_pop(L, 1);
	return v;
}

int drv_optfield_boolean(lua_State *L, int idx, const char *key, int def)
{
	int v;

	if (!push_field(L, idx, key))
		return def;
	if (!lua_isboolean(L, -1))
		field_error(L, idx, key, "boolean");
	v = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return v;
}

int drv_checksignal(lua_State *L, int idx)
{
	const char *name;

	if (lua_isinteger(L, idx))
		return (int)lua_tointeger(L, idx);
	name = luaL_checkstring(L, idx);
	if (strncmp(name, "SIG", 3) == 0)
		name += 3;
	for (int s = 1; s < NSIG; s++) {
		const char *abbrev = sigabbrev_np(s);

		if (abbrev && strcmp(abbrev, name) == 0)
			return s;
	}
	return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

double drv_seconds(const struct timespec *t)
{
	return (double)t->tv_sec + t->tv_nsec / 1e9;
}

double drv_clock(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return drv_seconds(&ts);
}

int drv_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read a small sysfs attribute, trimmed; 0 or -1 with errno. */
int drv_read_attr(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		n--;
	buf[n] = '\0';
	return 0;
}

/* Read path into a userdata of cap bytes, pushed; its length, or -1 with errno (-2: it did not fit). */
static ssize_t drv_read_into(lua_State *L, const char *path, size_t cap)
{
	char *buf = lua_newuserdatauv(L, cap, 0);
	size_t len = 0;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err;

	if (fd < 0)
		return lua_pop(L, 1), -1;
	while (len < cap - 1 && (n = read(fd, buf + len, cap - 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = errno;
			close(fd);
			lua_pop(L, 1);
			errno = err;
			return -1;
		}
		len += (size_t)n;
	}
	close(fd);
	if (len == cap - 1)
		return -2;
	buf[len] = '\0';
	return (ssize_t)len;
}

char *drv_push_file(lua_State *L, const char *path)
{
	size_t cap = 16384;
	ssize_t len;

	while ((len = drv_read_into(L, path, cap)) == -2) { /* read again, into a larger one */
		lua_pop(L, 1);
		cap *= 4;
	}
	return len < 0 ? NULL : lua_touserdata(L, -1);
}

/* By arithmetic (days to civil date, after H. Hinnant): gmtime and strftime
 * load the time zone (tzset reads /etc/localtime) for a time they write in UTC. */
void drv_utc(long long t, char *buf, size_t size)
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
