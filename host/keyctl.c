/* keyctl.c - drv.keyctl: the kernel's keyrings, read through keyctl(2).
 *
 * The keyrings that verify modules (.builtin_trusted_keys,
 * .secondary_trusted_keys, .machine, .platform) are in no process's keyring
 * tree: their serial numbers come from /proc/keys (drv.modsig reads it), and
 * what they hold from KEYCTL_READ; a key's description (for an X.509 key,
 * "subject: key identifier") from KEYCTL_DESCRIBE. No libkeyutils: two raw
 * system calls. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/keyctl.h>

#include "drv.h"

/* A key serial from argument idx: an integer, or the hex string /proc/keys shows. */
static int32_t keyctl_checkid(lua_State *L, int idx)
{
	if (lua_type(L, idx) == LUA_TSTRING) {
		const char *s = lua_tostring(L, idx);
		char *end;
		unsigned long v = strtoul(s, &end, 16);

		if (!*s || *end || v > UINT32_MAX)
			luaL_argerror(L, idx, "key serial expected (an integer, or hex as in /proc/keys)");
		return (int32_t)(uint32_t)v;
	}
	return (int32_t)luaL_checkinteger(L, idx);
}

/* The serial as /proc/keys shows it (lua_pushfstring has no %08x). */
static const char *keyctl_hex(int32_t id, char hex[9])
{
	snprintf(hex, 9, "%08x", (uint32_t)id);
	return hex;
}

static int keyctl_fail(lua_State *L, int32_t id)
{
	char hex[9];
	int err = errno;
	const char *why = err == ENOKEY ? "no such key" :
			  err == EACCES ? "permission denied (the key is not viewable or readable by this process)" :
			  strerror(err);

	return drv_fail(L, err, "key %s: %s", keyctl_hex(id, hex), why);
}

/* KEYCTL_DESCRIBE or KEYCTL_READ into a buffer that grows until the answer fits. */
static char *keyctl_fetch(int op, int32_t id, long *len)
{
	size_t size = 256;
	char *buf = NULL;

	for (;;) {
		char *more = realloc(buf, size);
		long n;

		if (!more) {
			free(buf);
			errno = ENOMEM;
			return NULL;
		}
		buf = more;
		n = syscall(SYS_keyctl, op, id, buf, size);
		if (n < 0) {
			free(buf);
			return NULL;
		}
		if ((size_t)n <= size) {
			*len = n;
			return buf;
		}
		size = (size_t)n;
	}
}

/***
 * What a key is.
 * @function describe
 * @tparam integer|string id its serial (hex string as in /proc/keys, or an integer)
 * @treturn[1] table `{ type = "asymmetric", uid, gid, perm, description = "drvrun test: 0181cc..." }`
 * @treturn[2] nil, "key 1ac52a20: no such key", errno
 * @see keyctl_describe(3)
 */
static int keyctl_l_describe(lua_State *L)
{
	int32_t id = keyctl_checkid(L, 1);
	long len;
	char *buf = keyctl_fetch(KEYCTL_DESCRIBE, id, &len);
	char *fields[5], *p, hex[9];
	int i;

	if (!buf)
		return keyctl_fail(L, id);
	/* "type;uid;gid;perm;description": the description may hold ';' */
	p = buf;
	for (i = 0; i < 4; i++) {
		fields[i] = p;
		p = memchr(p, ';', (size_t)(buf + len - p));
		if (!p) {
			free(buf);
			return drv_fail(L, EINVAL, "key %s: unexpected description", keyctl_hex(id, hex));
		}
		*p++ = '\0';
	}
	fields[4] = p;
	lua_createtable(L, 0, 5);
	lua_pushstring(L, fields[0]);
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, strtol(fields[1], NULL, 10));
	lua_setfield(L, -2, "uid");
	lua_pushinteger(L, strtol(fields[2], NULL, 10));
	lua_setfield(L, -2, "gid");
	lua_pushinteger(L, (lua_Integer)strtoul(fields[3], NULL, 16));
	lua_setfield(L, -2, "perm");
	lua_pushstring(L, fields[4]); /* NUL-terminated by the kernel */
	lua_setfield(L, -2, "description");
	free(buf);
	return 1;
}

/***
 * The keys a keyring holds (linked keyrings among them), by serial.
 * @function list
 * @tparam integer|string id the keyring's serial
 * @treturn[1] table `{ serial... }` (integers)
 * @treturn[2] nil, "key 1ac52a20: permission denied ...", errno
 * @see keyctl_read(3)
 */
static int keyctl_l_list(lua_State *L)
{
	int32_t id = keyctl_checkid(L, 1);
	long len, i;
	char *buf = keyctl_fetch(KEYCTL_READ, id, &len);

	if (!buf)
		return keyctl_fail(L, id);
	lua_createtable(L, (int)(len / 4), 0);
	for (i = 0; i + 4 <= len; i += 4) {
		int32_t serial;

		memcpy(&serial, buf + i, sizeof(serial));
		lua_pushinteger(L, (uint32_t)serial);
		lua_rawseti(L, -2, i / 4 + 1);
	}
	free(buf);
	return 1;
}

static const luaL_Reg keyctl_funcs[] = {
	{ "describe", keyctl_l_describe },
	{ "list", keyctl_l_list },
	{ NULL, NULL }
};

int luaopen_drv_keyctl(lua_State *L)
{
	luaL_newlib(L, keyctl_funcs);
	return 1;
}
