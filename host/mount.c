/* mount.c - drv.mount: mounts through libmount, and queries of
 * /proc/self/mountinfo, read here. Bind mounts, remounts and propagation
 * changes are plain mount(2) calls, and whether a path is a mount point is
 * statx(2)'s answer when the kernel gives it: there is nothing for libmount to
 * add to them, and loading it (with libblkid, libselinux and libpcre2) is most
 * of what exposing a root costs a restart in an emulated guest. libmount never
 * writes /etc/mtab here. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libmount.h>

#include "drv.h"
#include "lazy.h"

#define MOUNTINFO "/proc/self/mountinfo"

/* Run a prepared context's mount or umount; push the result. */
static int mnt_finish(lua_State *L, struct libmnt_context *cxt, int rc, const char *what,
		      const char *target)
{
	char buf[BUFSIZ] = "";
	int err;

	if (rc == 0) {
		mnt_free_context(cxt);
		return drv_ok(L);
	}
	if (rc > 0 || mnt_context_syscall_called(cxt)) {
		err = mnt_context_get_syscall_errno(cxt);
		if (err == 0)
			err = rc > 0 ? rc : EINVAL;
	} else {
		err = -rc;
	}
	mnt_context_get_excode(cxt, rc, buf, sizeof(buf));
	mnt_free_context(cxt);
	if (err <= 0)
		err = EIO;
	if (buf[0] && !strstr(buf, strerror(err)))
		return drv_fail(L, err, "%s %s: %s (%s)", what, target, strerror(err), buf);
	return drv_fail(L, err, "%s %s: %s", what, target, strerror(err));
}

static struct libmnt_context *mnt_new(lua_State *L)
{
	struct libmnt_context *cxt;

	DRV_LAZY_LOAD(L, MOUNT);
	cxt = mnt_new_context();
	if (!cxt)
		luaL_error(L, "not enough memory");
	mnt_context_disable_mtab(cxt, 1);
	mnt_context_disable_helpers(cxt, 1); /* no /sbin/mount.<type> */
	return cxt;
}

static int mnt_do_mount(lua_State *L, const char *source, const char *target,
			const char *fstype, const char *options)
{
	struct libmnt_context *cxt = mnt_new(L);

	if (access(target, F_OK) < 0)
		return mnt_free_context(cxt), drv_fail(L, errno, "mount %s: %s", target, strerror(errno));
	if ((source && mnt_context_set_source(cxt, source)) || mnt_context_set_target(cxt, target) ||
	    (fstype && mnt_context_set_fstype(cxt, fstype)) ||
	    (options && mnt_context_set_options(cxt, options))) {
		mnt_free_context(cxt);
		return drv_fail(L, EINVAL, "mount %s: invalid arguments", target);
	}
	return mnt_finish(L, cxt, mnt_context_mount(cxt), "mount", target);
}

/* options + extra, comma-joined, as a Lua string (kept on the stack). */
static const char *mnt_join(lua_State *L, const char *a, const char *b)
{
	if (a && *a && b && *b)
		return lua_pushfstring(L, "%s,%s", a, b);
	return lua_pushstring(L, a && *a ? a : b);
}

/***
 * Mount a filesystem.
 * @function mount
 * @tparam string source e.g. "tmpfs", "/dev/sdb1"
 * @tparam string target an existing directory
 * @tparam string fstype e.g. "tmpfs", "9p"
 * @tparam[opt] table opts `{ options = "size=1m,mode=0755", readonly = false }`
 * @treturn[1] true
 * @treturn[2] nil, "mount <target>: <cause>", errno
 * @see mnt_context_mount(3)
 */
static int mnt_l_mount(lua_State *L)
{
	const char *source = luaL_checkstring(L, 1);
	const char *target = luaL_checkstring(L, 2);
	const char *fstype = luaL_checkstring(L, 3);
	int opts = drv_opttable(L, 4);
	const char *options = drv_optfield_string(L, opts, "options", NULL);
	int ro = drv_optfield_boolean(L, opts, "readonly", 0);

	return mnt_do_mount(L, source, target, fstype, mnt_join(L, options, ro ? "ro" : NULL));
}

static int mnt_bind(lua_State *L, int recursive_default)
{
	const char *source = luaL_checkstring(L, 1);
	const char *target = luaL_checkstring(L, 2);
	int opts = drv_opttable(L, 3);
	int rec = drv_optfield_boolean(L, opts, "recursive", recursive_default);
	int ro = drv_optfield_boolean(L, opts, "readonly", 0);
	int err;

	if (access(source, F_OK) < 0)
		return drv_fail(L, errno, "mount %s: %s: %s", target, source, strerror(errno));
	if (mount(source, target, NULL, MS_BIND | (rec ? MS_REC : 0), NULL) < 0)
		return drv_fail(L, errno, "mount %s: %s", target, strerror(errno));
	if (ro && mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0) {
		err = errno;
		umount2(target, MNT_DETACH); /* not left writable */
		return drv_fail(L, err, "mount %s: read-only: %s", target, strerror(err));
	}
	return drv_ok(L);
}

/***
 * Bind-mount source on target (a read-only bind is bound, then remounted read-only).
 * @function bind
 * @tparam string source
 * @tparam string target
 * @tparam[opt] table opts `{ recursive = false, readonly = false }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see mount(2) MS_BIND
 */
static int mnt_l_bind(lua_State *L)
{
	return mnt_bind(L, 0);
}

/***
 * Recursive bind: source with every mount below it. Same as bind with recursive = true.
 * @function rbind
 * @see mount(2) MS_BIND|MS_REC
 */
static int mnt_l_rbind(lua_State *L)
{
	return mnt_bind(L, 1);
}

/***
 * Remount read-only or read-write (per mount point, as for a bind mount).
 * @function remount
 * @tparam string target
 * @tparam table opts `{ readonly = true|false }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see mount(2) MS_REMOUNT
 */
static int mnt_l_remount(lua_State *L)
{
	const char *target = luaL_checkstring(L, 1);
	int opts;
	int ro;

	luaL_checktype(L, 2, LUA_TTABLE);
	opts = drv_opttable(L, 2);
	ro = drv_optfield_boolean(L, opts, "readonly", 1);
	if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | (ro ? MS_RDONLY : 0), NULL) < 0)
		return drv_fail(L, errno, "remount %s: %s", target, strerror(errno));
	return drv_ok(L);
}

/***
 * Set the propagation of a mount.
 * @function propagation
 * @tparam string target a mount point
 * @tparam string kind "shared", "slave", "private" or "unbindable"
 * @tparam[opt] table opts `{ recursive = false }`
 * @treturn[1] true
 * @treturn[2] nil, "propagation <target>: <cause>", errno
 * @see mount(2) MS_SHARED
 */
static int mnt_l_propagation(lua_State *L)
{
	static const char *const kinds[] = { "shared", "slave", "private", "unbindable", NULL };
	static const unsigned long flags[] = { MS_SHARED, MS_SLAVE, MS_PRIVATE, MS_UNBINDABLE };
	const char *target = luaL_checkstring(L, 1);
	int kind = luaL_checkoption(L, 2, NULL, kinds);
	int opts = drv_opttable(L, 3);
	int rec = drv_optfield_boolean(L, opts, "recursive", 0);

	if (mount(NULL, target, NULL, flags[kind] | (rec ? MS_REC : 0), NULL) < 0) {
		int err = errno;

		if (err == EINVAL && access(target, F_OK) == 0)
			return drv_fail(L, err, "propagation %s: not a mount point", target);
		return drv_fail(L, err, "propagation %s: %s", target, strerror(err));
	}
	return drv_ok(L);
}

/* ---- mountinfo ------------------------------------------------------------
 * Read here, not through libmount's table: a restart reads it at every start,
 * and loading libmount with its libraries costs more than the read itself
 * (25 ms against 1 ms in an emulated guest). Its format is proc(5)'s. */

/* One line of mountinfo, its fields unescaped in place. */
struct mnt_entry {
	lua_Integer id, parent;
	const char *root, *target, *options, *optional, *fstype, *source, *fs_options;
};

/* Every line of mountinfo, in its order; the strings point into buf. */
struct mnt_table {
	char *buf;
	struct mnt_entry *e;
	size_t n;
};

/* The octal escapes of mountinfo ("\040" for a space) back to their bytes. */
static char *mnt_unescape(char *s)
{
	char *r = s, *w = s;

	while (*r) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
	return s;
}

/* The next space-separated field at *p, ended in place and unescaped; NULL when none is left. */
static char *mnt_field(char **p)
{
	char *s = *p, *end;

	if (!*s)
		return NULL;
	end = strchr(s, ' ');
	if (end) {
		*end = '\0';
		*p = end + 1;
	} else {
		*p = s + strlen(s);
	}
	return mnt_unescape(s);
}

/* "ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL...] - FSTYPE SOURCE FS_OPTIONS"; 0, or -1 if malformed. */
static int mnt_parse(char *line, struct mnt_entry *e)
{
	char *p = line, *id = mnt_field(&p), *parent = mnt_field(&p), *sep;

	if (!id || !parent || !mnt_field(&p))
		return -1;
	e->id = strtoll(id, NULL, 10);
	e->parent = strtoll(parent, NULL, 10);
	e->root = mnt_field(&p);
	e->target = mnt_field(&p);
	e->options = mnt_field(&p);
	if (strncmp(p, "- ", 2) == 0) {
		e->optional = "";
		p += 2;
	} else if ((sep = strstr(p, " - "))) {
		*sep = '\0';
		e->optional = p;
		p = sep + 3;
	} else {
		return -1;
	}
	e->fstype = mnt_field(&p);
	e->source = mnt_field(&p);
	e->fs_options = mnt_field(&p);
	return e->target && e->fstype ? 0 : -1;
}

/* mountinfo parsed into t (two userdata pushed); 1, or 0 with nil, message, errno pushed. */
static int mnt_table(lua_State *L, struct mnt_table *t)
{
	size_t lines = 0;
	char *line, *next;

	if (!(t->buf = drv_push_file(L, MOUNTINFO)))
		return drv_errno_fail(L, MOUNTINFO), 0;
	for (const char *c = t->buf; (c = strchr(c, '\n')); c++)
		lines++;
	t->e = lua_newuserdatauv(L, (lines + 1) * sizeof(*t->e), 0);
	t->n = 0;
	for (line = t->buf; *line; line = next) {
		next = strchr(line, '\n');
		next = next ? (*next = '\0', next + 1) : line + strlen(line);
		if (mnt_parse(line, &t->e[t->n]) == 0)
			t->n++;
	}
	return 1;
}

static void mnt_setstr(lua_State *L, const char *key, const char *v)
{
	if (!v)
		return;
	lua_pushstring(L, v);
	lua_setfield(L, -2, key);
}

/* Whether e's optional fields hold tag ("tag" or "tag:N"); N, or 0, in *value. */
static int mnt_optional(const struct mnt_entry *e, const char *tag, lua_Integer *value)
{
	size_t n = strlen(tag);

	for (const char *p = e->optional; (p = strstr(p, tag)); p += n) {
		if ((p == e->optional || p[-1] == ' ') && (p[n] == ':' || p[n] == ' ' || p[n] == '\0')) {
			*value = p[n] == ':' ? strtoll(p + n + 1, NULL, 10) : 0;
			return 1;
		}
	}
	return 0;
}

/* "shared", "slave", "private", "unbindable", or e.g. "shared,slave"; plus the peer groups. */
static void mnt_push_propagation(lua_State *L, const struct mnt_entry *e)
{
	lua_Integer shared, master, none;
	int is_shared = mnt_optional(e, "shared", &shared), is_slave = mnt_optional(e, "master", &master);
	char kind[64] = "";

	if (is_shared)
		strcat(kind, "shared");
	if (is_slave)
		strcat(kind, kind[0] ? ",slave" : "slave");
	if (mnt_optional(e, "unbindable", &none))
		strcat(kind, kind[0] ? ",unbindable" : "unbindable");
	if (!kind[0])
		strcat(kind, "private");
	mnt_setstr(L, "propagation", kind);
	if (is_shared) {
		lua_pushinteger(L, shared);
		lua_setfield(L, -2, "shared_group");
	}
	if (is_slave) {
		lua_pushinteger(L, master);
		lua_setfield(L, -2, "master");
	}
}

static void mnt_push_entry(lua_State *L, const struct mnt_entry *e)
{
	lua_createtable(L, 0, 11);
	lua_pushinteger(L, e->id);
	lua_setfield(L, -2, "id");
	lua_pushinteger(L, e->parent);
	lua_setfield(L, -2, "parent");
	mnt_setstr(L, "target", e->target);
	mnt_setstr(L, "source", e->source);
	mnt_setstr(L, "fstype", e->fstype);
	mnt_setstr(L, "root", e->root);
	mnt_setstr(L, "options", e->options);
	mnt_setstr(L, "fs_options", e->fs_options);
	mnt_push_propagation(L, e);
}

/* The canonical form of path (symlinks resolved); path itself when it does not exist. */
static const char *mnt_canon(const char *path, char *buf)
{
	return realpath(path, buf) ? buf : path;
}

/* The top-most mount exactly at path (the last listed there), or NULL. */
static const struct mnt_entry *mnt_at(const struct mnt_table *t, const char *path)
{
	const struct mnt_entry *found = NULL;

	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->e[i].target, path) == 0)
			found = &t->e[i];
	return found;
}

static int mnt_under(const char *target, const char *base)
{
	size_t n = strlen(base);

	if (strcmp(base, "/") == 0)
		return 1;
	return strncmp(target, base, n) == 0 && (target[n] == '\0' || target[n] == '/');
}

/***
 * Whether path is a mount point.
 * @function is_mountpoint
 * @tparam string path
 * @treturn boolean
 */
static int mnt_l_is_mountpoint(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char buf[PATH_MAX];
	struct mnt_table t;
	struct statx stx;
	int rc = statx(AT_FDCWD, path, AT_NO_AUTOMOUNT, STATX_TYPE, &stx);

	if (rc < 0 && errno == ENOENT)
		return lua_pushboolean(L, 0), 1;
	if (rc == 0 && (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
		return lua_pushboolean(L, (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0), 1;
	if (!mnt_table(L, &t)) /* a kernel before 5.8, or statx refused */
		return 3;
	lua_pushboolean(L, mnt_at(&t, mnt_canon(path, buf)) != NULL);
	return 1;
}

/***
 * The mount at path (the top-most one if several are stacked there).
 * @function info
 * @tparam string path
 * @treturn[1] table `{ id, parent, target, source, fstype, root, options, fs_options,
 *   propagation = "shared"|"slave"|"private"|"unbindable"|"shared,slave"…, shared_group, master }`
 * @treturn[2] nil, "<path>: not a mount point", EINVAL
 */
static int mnt_l_info(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char buf[PATH_MAX];
	const struct mnt_entry *e;
	struct mnt_table t;

	if (!mnt_table(L, &t))
		return 3;
	e = mnt_at(&t, mnt_canon(path, buf));
	if (!e)
		return drv_fail(L, EINVAL, "%s: not a mount point", path);
	mnt_push_entry(L, e);
	return 1;
}

/***
 * The mount that contains path (the filesystem it is on).
 * @function find
 * @tparam string path
 * @treturn[1] table as info
 * @treturn[2] nil, string message, string errno
 */
static int mnt_l_find(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char buf[PATH_MAX];
	const struct mnt_entry *found = NULL;
	size_t longest = 0;
	struct mnt_table t;

	if (!realpath(path, buf))
		return drv_errno_fail(L, path);
	if (!mnt_table(L, &t))
		return 3;
	for (size_t i = 0; i < t.n; i++) { /* the deepest mount point above path, the top-most there */
		size_t n = strlen(t.e[i].target);

		if (mnt_under(buf, t.e[i].target) && (!found || n >= longest)) {
			found = &t.e[i];
			longest = n;
		}
	}
	if (!found)
		return drv_fail(L, ENOENT, "%s: no mount contains it", path);
	mnt_push_entry(L, found);
	return 1;
}

/***
 * Every mount, in mountinfo order; with under, only those at or below it.
 * @function list
 * @tparam[opt] string under
 * @treturn[1] table of info tables
 * @treturn[2] nil, string message, string errno
 */
static int mnt_l_list(lua_State *L)
{
	const char *under = luaL_optstring(L, 1, NULL);
	char buf[PATH_MAX];
	struct mnt_table t;
	int n = 0;

	if (!mnt_table(L, &t))
		return 3;
	if (under)
		under = mnt_canon(under, buf);
	lua_createtable(L, (int)t.n, 0);
	for (size_t i = 0; i < t.n; i++) {
		if (under && !mnt_under(t.e[i].target, under))
			continue;
		mnt_push_entry(L, &t.e[i]);
		lua_rawseti(L, -2, ++n);
	}
	return 1;
}

/* Unmount one target with libmount. */
static int mnt_umount_one(lua_State *L, const char *target, int lazy, int force)
{
	struct libmnt_context *cxt = mnt_new(L);

	mnt_context_set_target(cxt, target);
	mnt_context_enable_lazy(cxt, lazy);
	mnt_context_enable_force(cxt, force);
	mnt_context_disable_swapmatch(cxt, 1);
	return mnt_finish(L, cxt, mnt_context_umount(cxt), "umount", target);
}

/***
 * Unmount. Recursive unmounts every mount at or below target, deepest first;
 * lazy detaches now and cleans up when no longer busy (MNT_DETACH).
 * @function umount
 * @tparam string target
 * @tparam[opt] table opts `{ lazy = false, recursive = false, force = false }`
 * @treturn[1] true
 * @treturn[2] nil, "umount <target>: <cause>", errno (EINVAL: not a mount point)
 * @see mnt_context_umount(3), umount2(2)
 */
static int mnt_l_umount(lua_State *L)
{
	const char *arg = luaL_checkstring(L, 1);
	int opts = drv_opttable(L, 2);
	int lazy = drv_optfield_boolean(L, opts, "lazy", 0);
	int rec = drv_optfield_boolean(L, opts, "recursive", 0);
	int force = drv_optfield_boolean(L, opts, "force", 0);
	char buf[PATH_MAX];
	const char *target = mnt_canon(arg, buf);
	struct mnt_table t;
	int top;

	if (!mnt_table(L, &t))
		return 3;
	if (!mnt_at(&t, target))
		return drv_fail(L, EINVAL, "umount %s: not a mount point", arg);
	if (!rec || lazy) {
		/* a lazy unmount detaches the whole tree below target at once */
		if (lazy && umount2(target, MNT_DETACH | (force ? MNT_FORCE : 0)) < 0)
			return drv_fail(L, errno, "umount %s: %s", arg, strerror(errno));
		return lazy ? drv_ok(L) : mnt_umount_one(L, target, 0, force);
	}
	/* collect targets below (mountinfo lists children after parents), unmount in reverse */
	lua_newtable(L);
	top = lua_gettop(L);
	for (size_t i = 0; i < t.n; i++) {
		if (mnt_under(t.e[i].target, target)) {
			lua_pushstring(L, t.e[i].target);
			lua_rawseti(L, top, (lua_Integer)lua_rawlen(L, top) + 1);
		}
	}
	for (lua_Integer i = (lua_Integer)lua_rawlen(L, top); i > 0; i--) {
		lua_rawgeti(L, top, i);
		if (umount2(lua_tostring(L, -1), force ? MNT_FORCE : 0) < 0)
			return drv_fail(L, errno, "umount %s: %s", lua_tostring(L, -1), strerror(errno));
		lua_pop(L, 1);
	}
	return drv_ok(L);
}

/***
 * Give this process a mount namespace of its own: a copy of the current one,
 * every mount a slave of its original (mounts made there still arrive; nothing
 * mounted here goes back). For a child run that binds things for itself only.
 * @function unshare
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see unshare(2), mount_namespaces(7)
 */
static int mnt_l_unshare(lua_State *L)
{
	if (unshare(CLONE_NEWNS) < 0)
		return drv_fail(L, errno, "unshare the mount namespace: %s", strerror(errno));
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
		return drv_fail(L, errno, "make / a slave mount in the new namespace: %s", strerror(errno));
	return drv_ok(L);
}

static const luaL_Reg mnt_funcs[] = {
	{ "unshare", mnt_l_unshare },
	{ "mount", mnt_l_mount },
	{ "bind", mnt_l_bind },
	{ "rbind", mnt_l_rbind },
	{ "remount", mnt_l_remount },
	{ "propagation", mnt_l_propagation },
	{ "umount", mnt_l_umount },
	{ "is_mountpoint", mnt_l_is_mountpoint },
	{ "info", mnt_l_info },
	{ "find", mnt_l_find },
	{ "list", mnt_l_list },
	{ NULL, NULL }
};

int luaopen_drv_mount(lua_State *L)
{
	luaL_newlib(L, mnt_funcs);
	return 1;
}
