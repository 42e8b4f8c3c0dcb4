/* drv.c - helpers shared by the C modules (see drv.h). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "drv.h"

int drv_fail(lua_State *L, int err, const char *fmt, ...)
{
	va_list ap;

	lua_pushnil(L);
	va_start(ap, fmt);
	lua_pushvfstring(L, fmt, ap);
	va_end(ap);
	lua_pushinteger(L, err);
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
