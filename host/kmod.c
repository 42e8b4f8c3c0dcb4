/* kmod.c - drv.kmod: kernel modules through libkmod.
 *
 * Lookups (name, alias, path) and insert/remove use libkmod. Live state comes
 * straight from <sysfs>/module and <proc>/modules, whose roots a context can
 * move (for tests and for reading another root). insert_many, remove_many and
 * change_many run finit_module(2)/delete_module(2) concurrently on a pool of
 * threads started before the first call, each call as soon as the items it
 * must come after are done (none: all at once, a dependency level); they never
 * touch libkmod, which is not thread-safe. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <libkmod.h>

#include "drv.h"
#include "lazy.h"

#define CTX_MT "drv.kmod.ctx"
#define HELD_MT "drv.kmod.held"

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4
#endif

struct kctx {
	struct kmod_ctx *kmod;	/* made at the first lookup (kmod_lib); NULL until then and once closed */
	int closed;
	char dirname[PATH_MAX];
	char sysfs[PATH_MAX];
	char proc[PATH_MAX];
};

/* ---- what a call holds ---------------------------------------------------- */

/* The libkmod objects (and buffers) a binding holds while it builds its
 * result, owned by a userdata made before the first of them: a Lua error (a
 * memory error in a lua_push*) that unwinds the call leaves them to its __gc,
 * and the binding releases them all (kmod_release_all) once done. */
enum held_kind { HELD_CTX, HELD_MODULE, HELD_MODULES, HELD_INFO, HELD_SYMBOLS, HELD_VERSIONS };

struct held {
	struct {
		void *p;
		enum held_kind kind;
	} slot[8];
};

static void kmod_release_one(void *p, enum held_kind kind)
{
	switch (kind) {
	case HELD_CTX:
		kmod_unref(p);
		break;
	case HELD_MODULE:
		kmod_module_unref(p);
		break;
	case HELD_MODULES:
		kmod_module_unref_list(p);
		break;
	case HELD_INFO:
		kmod_module_info_free_list(p);
		break;
	case HELD_SYMBOLS:
		kmod_module_symbols_free_list(p);
		break;
	case HELD_VERSIONS:
		kmod_module_versions_free_list(p);
		break;
	}
}

/* Release all that h holds: at the end of a binding, or by __gc. */
static void kmod_release_all(struct held *h)
{
	for (size_t i = 0; i < sizeof(h->slot) / sizeof(h->slot[0]); i++)
		if (h->slot[i].p)
			kmod_release_one(h->slot[i].p, h->slot[i].kind);
	memset(h, 0, sizeof(*h));
}

static int kmod_held_gc(lua_State *L)
{
	kmod_release_all(luaL_checkudata(L, 1, HELD_MT));
	return 0;
}

/* A new holder, pushed (it stays below the binding's results). */
static struct held *kmod_hold(lua_State *L)
{
	struct held *h = lua_newuserdatauv(L, sizeof(*h), 0);

	memset(h, 0, sizeof(*h));
	luaL_setmetatable(L, HELD_MT);
	return h;
}

/* Hold p (NULL is nothing to hold); returns p. */
static void *kmod_keep(struct held *h, enum held_kind kind, void *p)
{
	size_t i = 0;

	if (!p)
		return p;
	while (h->slot[i].p)
		if (++i == sizeof(h->slot) / sizeof(h->slot[0]))
			abort();	/* a binding holds at most 6 at once (modinfo): a bug of drvrun's */
	h->slot[i].p = p;
	h->slot[i].kind = kind;
	return p;
}

/* Release p now, and forget it. */
static void kmod_drop(struct held *h, void *p)
{
	for (size_t i = 0; p && i < sizeof(h->slot) / sizeof(h->slot[0]); i++)
		if (h->slot[i].p == p) {
			kmod_release_one(p, h->slot[i].kind);
			h->slot[i].p = NULL;
			return;
		}
}

/* ---- errors ------------------------------------------------------------- */

/* Words for what finit_module/delete_module errnos mean, after kmod's mod_strerror. */
static const char *kmod_insert_strerror(int err)
{
	switch (err) {
	case ENOEXEC:
		return "invalid module format (built for another kernel, or not a module)";
	case ENOENT:
		return "unknown symbol in module, or unknown parameter";
	case EINVAL:
		return "invalid parameters, or a symbol version disagrees with the loaded modules";
	case EEXIST:
		return "already loaded";
	case EPERM:
		return "operation not permitted (module loading disabled, not root, or a kernel lockdown refusing an unverified module)";
	case EKEYREJECTED:
	case ENOKEY:
		return "signature rejected (unsigned, or signed with a key the kernel does not trust, under module signature enforcement)";
	case EBUSY:
		return "in use";
	case ENOSYS:
		return "this kernel does not support loadable modules";
	default:
		return strerror(err);
	}
}

/* The last kernel log line about module name, for the detail dmesg would give. */
static void kmod_last_klog(const char *name, char *out, size_t size)
{
	int len = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *buf, *line, *save = NULL;
	size_t nlen = strlen(name);

	out[0] = '\0';
	if (len <= 0 || !(buf = malloc((size_t)len + 1)))
		return;
	len = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, len);
	if (len > 0) {
		buf[len] = '\0';
		for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			char *msg = strchr(line, ']');

			msg = msg ? msg + 1 : line;
			while (*msg == ' ')
				msg++;
			if (strncmp(msg, name, nlen) == 0 && msg[nlen] == ':')
				snprintf(out, size, "%s", msg);
		}
	}
	free(buf);
}

/* Push "name: cause[; kernel says: …]" for an insert failure. */
static const char *kmod_push_insert_error(lua_State *L, const char *name, int err)
{
	char klog[512];

	kmod_last_klog(name, klog, sizeof(klog));
	if (klog[0] && err != EEXIST && err != EPERM)
		return lua_pushfstring(L, "%s: %s (kernel: %s)", name, kmod_insert_strerror(err), klog);
	return lua_pushfstring(L, "%s: %s", name, kmod_insert_strerror(err));
}

/* ---- live state from sysfs and /proc --------------------------------- */

static void kmod_normalize(char *dst, const char *src, size_t size)
{
	size_t i;

	for (i = 0; i + 1 < size && src[i]; i++)
		dst[i] = src[i] == '-' ? '_' : src[i];
	dst[i] = '\0';
}

static int kmod_cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Push a sorted array of the names in <sysfs>/module/<name>/holders (read
 * into this frame, not the heap: a memory error while pushing leaks nothing). */
static void kmod_push_holders(lua_State *L, const struct kctx *c, const char *name)
{
	char path[PATH_MAX * 2];
	char names[256][64];	/* module names are at most 55 characters */
	char *sorted[256];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/module/%s/holders", c->sysfs, name);
	lua_newtable(L);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d)) != NULL && n < 256) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(names[n], sizeof(names[n]), "%.63s", e->d_name);
		sorted[n] = names[n];
		n++;
	}
	closedir(d);
	qsort(sorted, (size_t)n, sizeof(char *), kmod_cmpstr);
	for (int i = 0; i < n; i++) {
		lua_pushstring(L, sorted[i]);
		lua_rawseti(L, -2, i + 1);
	}
}

static void kmod_setattr(lua_State *L, const struct kctx *c, const char *name,
			 const char *attr, const char *field, int as_int)
{
	char path[PATH_MAX * 2], buf[256];

	snprintf(path, sizeof(path), "%s/module/%s/%s", c->sysfs, name, attr);
	if (drv_read_attr(path, buf, sizeof(buf)) < 0)
		return;
	if (as_int)
		lua_pushinteger(L, strtoll(buf, NULL, 10));
	else
		lua_pushstring(L, buf);
	lua_setfield(L, -2, field);
}

/* ---- context ------------------------------------------------------------ */

static struct kctx *kmod_checkctx(lua_State *L, int idx)
{
	struct kctx *c = luaL_checkudata(L, idx, CTX_MT);

	luaL_argcheck(L, !c->closed, idx, "context is closed");
	return c;
}

/***
 * Release the context's libkmod resources now, rather than at collection (also
 * `__close`: `local ctx <close> = kmod.new()`); a closed context raises when used.
 * @function ctx:close
 */
static int kmod_ctx_gc(lua_State *L)
{
	struct kctx *c = luaL_checkudata(L, 1, CTX_MT);

	if (c->kmod) {
		kmod_unref(c->kmod);
		c->kmod = NULL;
	}
	c->closed = 1;
	return 0;
}

static int kmod_ctx_tostring(lua_State *L)
{
	struct kctx *c = luaL_checkudata(L, 1, CTX_MT);

	lua_pushfstring(L, "drv.kmod.ctx (%s%s)", c->dirname, c->closed ? ", closed" : "");
	return 1;
}

static void kmod_copy_opt(lua_State *L, int opts, const char *key, const char *def,
			  char *dst, size_t size)
{
	const char *v = drv_optfield_string(L, opts, key, def);

	if (strlen(v) >= size)
		luaL_argerror(L, opts, lua_pushfstring(L, "field '%s': path too long", key));
	snprintf(dst, size, "%s", v);
}

/***
 * A libkmod context over a modules directory. Its module indexes are loaded
 * at its first lookup (info, lookup, insert), not here: state and loaded do not need them.
 * @function new
 * @tparam[opt] table opts `{ dirname = "/lib/modules/<release>" (default: the running kernel's),
 *   sysfs = "/sys", proc = "/proc" }` (roots for live state)
 * @treturn[1] ctx userdata
 * @treturn[2] nil, string message, string errno
 * @see kmod_new(3)
 */
static int kmod_l_new(lua_State *L)
{
	int opts = drv_opttable(L, 1);
	struct utsname u;
	char def[PATH_MAX], index[PATH_MAX + 32];
	struct kctx *c;

	uname(&u);
	snprintf(def, sizeof(def), "/lib/modules/%s", u.release);
	c = lua_newuserdatauv(L, sizeof(*c), 0);
	c->kmod = NULL;
	c->closed = 1; /* until it is complete */
	luaL_setmetatable(L, CTX_MT);
	kmod_copy_opt(L, opts, "dirname", def, c->dirname, sizeof(c->dirname));
	kmod_copy_opt(L, opts, "sysfs", "/sys", c->sysfs, sizeof(c->sysfs));
	kmod_copy_opt(L, opts, "proc", "/proc", c->proc, sizeof(c->proc));
	if (access(c->dirname, R_OK) < 0)
		return drv_fail(L, errno, "%s: %s (no modules for this kernel; install them or pass dirname)",
				c->dirname, strerror(errno));
	snprintf(index, sizeof(index), "%s/modules.dep.bin", c->dirname);
	if (access(index, R_OK) < 0)
		return drv_fail(L, errno, "%s: cannot load the module indexes: %s (run depmod)",
				c->dirname, strerror(errno));
	c->closed = 0;
	return 1;
}

/* The libkmod context of c, made and its indexes loaded at the first call
 * that needs them: state() and loaded() read sysfs and /proc only, and a
 * recipe opens a context in most phases. NULL with the failure pushed (3 values). */
static struct kmod_ctx *kmod_lib(lua_State *L, struct kctx *c)
{
	int err;

	if (c->kmod)
		return c->kmod;
	DRV_LAZY_LOAD(L, KMOD);
	c->kmod = kmod_new(c->dirname, NULL);
	if (!c->kmod) {
		drv_fail(L, ENOMEM, "%s: cannot create a libkmod context", c->dirname);
		return NULL;
	}
	err = kmod_load_resources(c->kmod);
	if (err < 0) {
		kmod_unref(c->kmod);
		c->kmod = NULL;
		drv_fail(L, -err, "%s: cannot load the module indexes: %s (run depmod)", c->dirname, strerror(-err));
		return NULL;
	}
	return c->kmod;
}

/***
 * The modules directory the context reads (`/lib/modules/RELEASE`, or the `dirname` it was made with).
 * @function ctx:dirname
 * @treturn string
 */
static int kmod_m_dirname(lua_State *L)
{
	lua_pushstring(L, kmod_checkctx(L, 1)->dirname);
	return 1;
}

/* Find one module by name or path, held by h. NULL with an error pushed (3 values). */
static struct kmod_module *kmod_find(lua_State *L, struct held *h, struct kctx *c, const char *name)
{
	struct kmod_ctx *k = kmod_lib(L, c);
	struct kmod_module *mod = NULL;
	struct kmod_list *list = NULL;
	int err;

	if (!k)
		return NULL;
	if (strchr(name, '/')) {
		err = kmod_module_new_from_path(k, name, &mod);
		if (err < 0) {
			drv_fail(L, -err, "%s: %s", name, strerror(-err));
			return NULL;
		}
		return kmod_keep(h, HELD_MODULE, mod);
	}
	err = kmod_module_new_from_lookup(k, name, &list);
	if (err < 0 || !list) {
		drv_fail(L, ENOENT, "%s: module not found in %s (run depmod, or check the name)",
			 name, c->dirname);
		return NULL;
	}
	mod = kmod_module_get_module(list);
	kmod_module_unref_list(list);
	return kmod_keep(h, HELD_MODULE, mod);
}

/* Set field to the module names in csv, normalized ("pci-hyperv-intf" is pci_hyperv_intf). */
static void kmod_push_list_field(lua_State *L, const char *field, const char *csv)
{
	char name[256];
	int n = 0;

	lua_newtable(L);
	for (const char *s = csv + strspn(csv, ", "); *s; s += strspn(s, ", ")) {
		size_t len = strcspn(s, ", ");

		snprintf(name, sizeof(name), "%.*s", (int)len, s);
		kmod_normalize(name, name, sizeof(name));
		lua_pushstring(L, name);
		lua_rawseti(L, -2, ++n);
		s += len;
	}
	lua_setfield(L, -2, field);
}

/* The parameter entry named by "name:rest" in params (a table at -1), created if new. */
static void kmod_param(lua_State *L, int params, const char *value, const char *field)
{
	const char *colon = strchr(value, ':');
	int n = (int)lua_rawlen(L, params);

	if (!colon)
		return;
	for (int i = 1; i <= n; i++) {
		lua_rawgeti(L, params, i);
		lua_getfield(L, -1, "name");
		if (strncmp(lua_tostring(L, -1), value, (size_t)(colon - value)) == 0 &&
		    lua_rawlen(L, -1) == (size_t)(colon - value)) {
			lua_pop(L, 1);
			lua_pushstring(L, colon + 1);
			lua_setfield(L, -2, field);
			lua_pop(L, 1);
			return;
		}
		lua_pop(L, 2);
	}
	lua_createtable(L, 0, 3);
	lua_pushlstring(L, value, (size_t)(colon - value));
	lua_setfield(L, -2, "name");
	lua_pushstring(L, colon + 1);
	lua_setfield(L, -2, field);
	lua_rawseti(L, params, n + 1);
}

/* Push an array of the names of the modules in list (each get_module is a reference). */
static void kmod_push_names(lua_State *L, struct held *h, struct kmod_list *list)
{
	struct kmod_list *l;
	int n = 0;

	lua_newtable(L);
	kmod_list_foreach(l, list) {
		struct kmod_module *mod = kmod_keep(h, HELD_MODULE, kmod_module_get_module(l));

		lua_pushstring(L, kmod_module_get_name(mod));
		lua_rawseti(L, -2, ++n);
		kmod_drop(h, mod);
	}
}

static void kmod_push_softdeps(lua_State *L, struct held *h, struct kmod_module *mod)
{
	struct kmod_list *pre = NULL, *post = NULL;

	if (kmod_module_get_softdeps(mod, &pre, &post) < 0)
		return;
	kmod_keep(h, HELD_MODULES, pre);
	kmod_keep(h, HELD_MODULES, post);
	lua_createtable(L, 0, 2);
	kmod_push_names(L, h, pre);
	lua_setfield(L, -2, "pre");
	kmod_push_names(L, h, post);
	lua_setfield(L, -2, "post");
	lua_setfield(L, -2, "softdeps");
	kmod_drop(h, pre);
	kmod_drop(h, post);
}

/* Push the info table of mod. */
static void kmod_push_info(lua_State *L, struct held *h, struct kmod_module *mod)
{
	struct kmod_list *info = NULL, *l;
	const char *path = kmod_module_get_path(mod);
	int params;

	lua_createtable(L, 0, 12);
	lua_pushstring(L, kmod_module_get_name(mod));
	lua_setfield(L, -2, "name");
	if (path) {
		lua_pushstring(L, path);
		lua_setfield(L, -2, "path");
	}
	lua_pushboolean(L, path == NULL && kmod_module_get_initstate(mod) == KMOD_MODULE_BUILTIN);
	lua_setfield(L, -2, "builtin");
	lua_newtable(L);
	params = lua_gettop(L);
	lua_pushvalue(L, params);
	lua_setfield(L, -3, "parameters");
	lua_newtable(L);
	lua_setfield(L, -3, "depends");
	if (kmod_module_get_info(mod, &info) >= 0) {
		kmod_keep(h, HELD_INFO, info);
		kmod_list_foreach(l, info) {
			const char *key = kmod_module_info_get_key(l);
			const char *value = kmod_module_info_get_value(l);

			if (!value)
				continue;
			if (strcmp(key, "parm") == 0)
				kmod_param(L, params, value, "description");
			else if (strcmp(key, "parmtype") == 0)
				kmod_param(L, params, value, "type");
			else if (strcmp(key, "depends") == 0) {
				lua_pushvalue(L, params - 1);
				kmod_push_list_field(L, "depends", value);
				lua_pop(L, 1);
			} else if (strcmp(key, "version") == 0 || strcmp(key, "srcversion") == 0 ||
				   strcmp(key, "vermagic") == 0 || strcmp(key, "license") == 0 ||
				   strcmp(key, "description") == 0 || strcmp(key, "signer") == 0 ||
				   strcmp(key, "sig_key") == 0 || strcmp(key, "sig_hashalgo") == 0) {
				lua_pushstring(L, value);
				lua_setfield(L, params - 1, key);
			}
		}
		kmod_drop(h, info);
	}
	lua_pop(L, 1); /* params */
	kmod_push_softdeps(L, h, mod);
}

/***
 * What a module is: from its .ko (modinfo) and the modules directory.
 * @function ctx:info
 * @tparam string name a module name, alias or .ko path
 * @treturn[1] table `{ name, path, builtin, version, srcversion, vermagic, license, description,
 *   signer, sig_key, sig_hashalgo (of a signed module: the signing key's issuer CN, its serial
 *   as "5F:91:…", the hash), depends = {…}, softdeps = { pre = {…}, post = {…} }, parameters = { {name, type, description}… } }`
 * @treturn[2] nil, "<name>: module not found in <dir> …", ENOENT
 * @see kmod_module_get_info(3)
 */
static int kmod_m_info(lua_State *L)
{
	struct kctx *c = kmod_checkctx(L, 1);
	const char *name = luaL_checkstring(L, 2);
	struct held *h = kmod_hold(L);
	struct kmod_module *mod = kmod_find(L, h, c, name);

	if (!mod)
		return 3;
	kmod_push_info(L, h, mod);
	kmod_release_all(h);
	return 1;
}

/***
 * The module names an alias (or name) resolves to; {} when none.
 * @function ctx:lookup
 * @tparam string alias
 * @treturn[1] table
 * @treturn[2] nil, string message, string errno (the module indexes cannot be loaded)
 * @see kmod_module_new_from_lookup(3)
 */
static int kmod_m_lookup(lua_State *L)
{
	struct kctx *c = kmod_checkctx(L, 1);
	const char *alias = luaL_checkstring(L, 2);
	struct held *h = kmod_hold(L);
	struct kmod_ctx *k = kmod_lib(L, c);
	struct kmod_list *list = NULL;

	if (!k)
		return 3;
	if (kmod_module_new_from_lookup(k, alias, &list) < 0)
		list = NULL;
	kmod_push_names(L, h, kmod_keep(h, HELD_MODULES, list));
	kmod_release_all(h);
	return 1;
}

/* The fields ctx:state can read, each from its sysfs attribute (holders: a directory). */
static const char *const state_fields[] = { "refcount", "srcversion", "version", "size", "taint", "holders", NULL };

/* Which of state_fields the optional list at idx names (all when absent), as bits. */
static unsigned kmod_state_wanted(lua_State *L, int idx)
{
	unsigned want = 0;

	if (lua_isnoneornil(L, idx))
		return ~0u;
	luaL_checktype(L, idx, LUA_TTABLE);
	for (lua_Integer i = 1; lua_rawgeti(L, idx, i) != LUA_TNIL; i++) {
		const char *f = lua_tostring(L, -1);
		int k;

		for (k = 0; f && state_fields[k] && strcmp(f, state_fields[k]) != 0; k++)
			;
		if (!f || !state_fields[k])
			return (unsigned)luaL_argerror(L, idx, lua_pushfstring(L, "unknown field '%s'", f ? f : "?"));
		want |= 1u << k;
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return want;
}

/***
 * A module's live state, from sysfs.
 * @function ctx:state
 * @tparam string name
 * @tparam[opt] table fields only these of `refcount srcversion version size taint holders` (each
 *   is a file of sysfs to read: `{ "srcversion" }` is a fifth of the reads)
 * @treturn[1] table `{ name, initstate = "live"|"coming"|"going"|"builtin", refcount, holders = {…},
 *   srcversion, version, taint ("" when none), size }`
 * @treturn[2] nil, "<name>: not loaded", ENOENT
 */
static int kmod_m_state(lua_State *L)
{
	struct kctx *c = kmod_checkctx(L, 1);
	const char *arg = luaL_checkstring(L, 2);
	unsigned want = kmod_state_wanted(L, 3);
	char name[256], path[PATH_MAX * 2], buf[64];

	kmod_normalize(name, arg, sizeof(name));
	snprintf(path, sizeof(path), "%s/module/%s/initstate", c->sysfs, name);
	if (drv_read_attr(path, buf, sizeof(buf)) < 0) {
		snprintf(path, sizeof(path), "%s/module/%s", c->sysfs, name);
		if (access(path, F_OK) < 0)
			return drv_fail(L, ENOENT, "%s: not loaded", name);
		snprintf(buf, sizeof(buf), "builtin");
	}
	lua_createtable(L, 0, 8);
	lua_pushstring(L, name);
	lua_setfield(L, -2, "name");
	lua_pushstring(L, buf);
	lua_setfield(L, -2, "initstate");
	if (want & 1u << 0) {
		lua_pushinteger(L, 0);
		lua_setfield(L, -2, "refcount");
		kmod_setattr(L, c, name, "refcnt", "refcount", 1);
	}
	if (want & 1u << 1)
		kmod_setattr(L, c, name, "srcversion", "srcversion", 0);
	if (want & 1u << 2)
		kmod_setattr(L, c, name, "version", "version", 0);
	if (want & 1u << 3)
		kmod_setattr(L, c, name, "coresize", "size", 1);
	if (want & 1u << 4) {
		lua_pushliteral(L, "");
		lua_setfield(L, -2, "taint");
		kmod_setattr(L, c, name, "taint", "taint", 0);
	}
	if (want & 1u << 5) {
		kmod_push_holders(L, c, name);
		lua_setfield(L, -2, "holders");
	}
	return 1;
}

/* Split "a,b,c," into an array table at the top of the stack. */
static void kmod_push_csv(lua_State *L, const char *s)
{
	int n = 0;

	lua_newtable(L);
	if (strcmp(s, "-") == 0)
		return;
	while (*s) {
		const char *comma = strchrnul(s, ',');

		if (comma > s) {
			lua_pushlstring(L, s, (size_t)(comma - s));
			lua_rawseti(L, -2, ++n);
		}
		s = *comma ? comma + 1 : comma;
	}
}

/* One line of <proc>/modules ("name size refcount holders state address"), as a table. */
static int kmod_push_loaded(lua_State *L, char *line)
{
	char *field[5], *save = NULL;
	int k = 0;

	for (char *t = strtok_r(line, " ", &save); t && k < 5; t = strtok_r(NULL, " ", &save))
		field[k++] = t;
	if (k < 5)
		return 0;
	lua_createtable(L, 0, 5);
	lua_pushstring(L, field[0]);
	lua_setfield(L, -2, "name");
	lua_pushinteger(L, strtoll(field[1], NULL, 10));
	lua_setfield(L, -2, "size");
	lua_pushinteger(L, strtoll(field[2], NULL, 10));
	lua_setfield(L, -2, "refcount");
	kmod_push_csv(L, field[3]);
	lua_setfield(L, -2, "holders");
	lua_pushstring(L, field[4]);
	lua_setfield(L, -2, "state");
	return 1;
}

/***
 * The loaded modules, in <proc>/modules order.
 * @function ctx:loaded
 * @treturn[1] table `{ { name, size, refcount, holders = {…}, state = "Live" }… }`
 * @treturn[2] nil, string message, string errno
 */
static int kmod_m_loaded(lua_State *L)
{
	struct kctx *c = kmod_checkctx(L, 1);
	char path[PATH_MAX + 16], *text, *save = NULL;
	int n = 0;

	struct held *h = kmod_hold(L);

	snprintf(path, sizeof(path), "%s/modules", c->proc);
	if (!(text = drv_push_file(L, path)))
		return drv_errno_fail(L, path);
	lua_newtable(L);
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (kmod_push_loaded(L, line))
			lua_rawseti(L, -2, ++n);
	kmod_release_all(h);
	return 1;
}

/* Push "name: in use by a, b", or the refcount when only non-module
 * references (open devices, processes) hold it. sysfs is the root to read. */
static const char *kmod_push_busy(lua_State *L, const char *sysfs, const char *name)
{
	struct kctx c;
	char path[PATH_MAX * 2], buf[32];
	lua_Integer refcnt = 0;
	luaL_Buffer b;
	int holders, n;

	snprintf(c.sysfs, sizeof(c.sysfs), "%s", sysfs);
	snprintf(path, sizeof(path), "%s/module/%s/refcnt", sysfs, name);
	if (drv_read_attr(path, buf, sizeof(buf)) == 0)
		refcnt = strtoll(buf, NULL, 10);
	kmod_push_holders(L, &c, name);
	holders = lua_gettop(L);
	n = (int)lua_rawlen(L, holders);
	luaL_buffinit(L, &b);
	if (n == 0) {
		lua_pushfstring(L, "%s: in use (refcount %d): held by a process or another reference",
				name, (int)refcnt);
		luaL_addvalue(&b);
	} else {
		luaL_addstring(&b, name);
		luaL_addstring(&b, ": in use by ");
		for (int i = 1; i <= n; i++) {
			lua_rawgeti(L, holders, i);
			luaL_addvalue(&b);
			if (i < n)
				luaL_addstring(&b, ", ");
		}
	}
	luaL_pushresult(&b);
	lua_remove(L, holders);
	return lua_tostring(L, -1);
}

/* Whether the modprobe configuration blacklists mod. */
static int kmod_blacklisted(struct kctx *c, struct kmod_module *mod)
{
	struct kmod_list *in = NULL, *out = NULL;
	int listed;

	if (kmod_module_new_from_lookup(c->kmod, kmod_module_get_name(mod), &in) < 0 || !in)
		return 0;
	listed = kmod_module_apply_filter(c->kmod, KMOD_FILTER_BLACKLIST, in, &out) == 0 && !out;
	kmod_module_unref_list(in);
	kmod_module_unref_list(out);
	return listed;
}

static int kmod_insert_fail(lua_State *L, struct kmod_module *mod, int err)
{
	lua_pushnil(L);
	kmod_push_insert_error(L, kmod_module_get_name(mod), err);
	drv_push_errname(L, err);
	return 3;
}

static int kmod_blacklist_fail(lua_State *L, struct kmod_module *mod)
{
	return drv_fail(L, EPERM, "%s: blacklisted by the modprobe configuration "
			"(pass blacklist = false to load it anyway)", kmod_module_get_name(mod));
}

/***
 * Insert a module (and, by default, its dependencies, like modprobe).
 * A module already loaded is success.
 * @function ctx:insert
 * @tparam string name module name, alias or .ko path
 * @tparam[opt] table opts `{ options = "p=1 q=2", blacklist = true, dependencies = true }`
 * @treturn[1] true
 * @treturn[2] nil, "<name>: <cause> (kernel: …)", errno
 * @see kmod_module_probe_insert_module(3)
 */
static int kmod_m_insert(lua_State *L)
{
	struct kctx *c = kmod_checkctx(L, 1);
	const char *name = luaL_checkstring(L, 2);
	int opts = drv_opttable(L, 3);
	const char *options = drv_optfield_string(L, opts, "options", NULL);
	int blacklist = drv_optfield_boolean(L, opts, "blacklist", 1);
	int deps = drv_optfield_boolean(L, opts, "dependencies", 1);
	struct held *h = kmod_hold(L);
	struct kmod_module *mod = kmod_find(L, h, c, name);
	int err;

	if (!mod)
		return 3;
	if (deps) {
		unsigned flags = KMOD_PROBE_IGNORE_LOADED | (blacklist ? KMOD_PROBE_APPLY_BLACKLIST : 0);

		err = kmod_module_probe_insert_module(mod, flags, options, NULL, NULL, NULL);
		if (err == KMOD_PROBE_APPLY_BLACKLIST)
			return kmod_blacklist_fail(L, mod);
	} else {
		if (blacklist && !strchr(name, '/') && kmod_blacklisted(c, mod))
			return kmod_blacklist_fail(L, mod);
		err = kmod_module_insert_module(mod, 0, options);
		if (err == -EEXIST)
			err = 0;
	}
	if (err < 0)
		return kmod_insert_fail(L, mod, -err);
	kmod_release_all(h);
	return drv_ok(L);
}

/***
 * Remove a loaded module (never waits: a module in use is an error naming its users).
 * @function ctx:remove
 * @tparam string name
 * @tparam[opt] table opts `{ force = false }`
 * @treturn[1] true
 * @treturn[2] nil, "rdma_cm: in use by rdma_ucm, ib_ipoib", EBUSY; nil, "<name>: not loaded", ENOENT
 * @see delete_module(2)
 */
static int kmod_m_remove(lua_State *L)
{
	struct kctx *c = kmod_checkctx(L, 1);
	const char *arg = luaL_checkstring(L, 2);
	int opts = drv_opttable(L, 3);
	int force = drv_optfield_boolean(L, opts, "force", 0);
	char name[256];

	kmod_normalize(name, arg, sizeof(name));
	if (syscall(SYS_delete_module, name, O_NONBLOCK | (force ? O_TRUNC : 0)) == 0)
		return drv_ok(L);
	switch (errno) {
	case ENOENT:
		return drv_fail(L, ENOENT, "%s: not loaded", name);
	case EWOULDBLOCK:
	case EBUSY:
		lua_pushnil(L);
		kmod_push_busy(L, c->sysfs, name);
		drv_push_errname(L, EBUSY);
		return 3;
	case EPERM:
		return drv_fail(L, EPERM, "%s: operation not permitted (module unloading disabled, or not root)",
				name);
	case ENOSYS:
		return drv_fail(L, ENOSYS, "%s: %s", name, kmod_insert_strerror(ENOSYS));
	default:
		return drv_fail(L, errno, "%s: %s", name, strerror(errno));
	}
}

/* A module object for a .ko file in a context of its own, both held by h;
 * NULL with the failure pushed (3 values). */
static struct kmod_module *kmod_open_file(lua_State *L, struct held *h, const char *path)
{
	struct kmod_module *mod = NULL;
	struct kmod_ctx *ctx;
	int err;

	if (access(path, R_OK) < 0)
		return drv_errno_fail(L, path), NULL;
	DRV_LAZY_LOAD(L, KMOD);
	ctx = kmod_keep(h, HELD_CTX, kmod_new("/nonexistent", NULL));
	if (!ctx)
		return drv_fail(L, ENOMEM, "%s: cannot create a libkmod context", path), NULL;
	err = kmod_module_new_from_path(ctx, path, &mod);
	if (err < 0)
		return drv_fail(L, -err, "%s: %s", path, strerror(-err)), NULL;
	return kmod_keep(h, HELD_MODULE, mod);
}

/***
 * modinfo of a .ko file anywhere (not only in a modules directory).
 * @function modinfo
 * @tparam string path
 * @treturn[1] table as ctx:info
 * @treturn[2] nil, string message, string errno
 * @see kmod_module_new_from_path(3)
 */
static int kmod_l_modinfo(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct held *h = kmod_hold(L);
	struct kmod_module *mod = kmod_open_file(L, h, path);

	if (!mod)
		return 3;
	kmod_push_info(L, h, mod);
	lua_pushnil(L);
	lua_setfield(L, -2, "softdeps"); /* configuration-dependent: not a property of the file */
	kmod_release_all(h);
	return 1;
}

/* { [symbol] = crc } of a .ko: what it needs (__versions) or what it exports. */
static int kmod_crc_table(lua_State *L, int exported)
{
	const char *path = luaL_checkstring(L, 1);
	struct kmod_list *list = NULL, *l;
	struct held *h = kmod_hold(L);
	struct kmod_module *mod = kmod_open_file(L, h, path);
	int err;

	if (!mod)
		return 3;
	err = exported ? kmod_module_get_symbols(mod, &list) : kmod_module_get_versions(mod, &list);
	if (err == -ENOENT)
		err = 0;	/* the file is there (mod was made from it): it has no such section */
	if (err < 0)
		return drv_fail(L, -err, "%s: %s", path, strerror(-err));
	kmod_keep(h, exported ? HELD_SYMBOLS : HELD_VERSIONS, list);
	lua_newtable(L);
	kmod_list_foreach(l, list) {
		if (exported) {
			lua_pushinteger(L, (lua_Integer)kmod_module_symbol_get_crc(l));
			lua_setfield(L, -2, kmod_module_symbol_get_symbol(l));
		} else {
			lua_pushinteger(L, (lua_Integer)kmod_module_version_get_crc(l));
			lua_setfield(L, -2, kmod_module_version_get_symbol(l));
		}
	}
	kmod_release_all(h);
	return 1;
}

/***
 * The symbol CRCs a .ko was built against (its __versions section).
 * @function versions
 * @tparam string path
 * @treturn[1] table `{ [symbol] = crc (integer) }`
 * @treturn[2] nil, string message, string errno
 * @see kmod_module_get_versions(3)
 */
static int kmod_l_versions(lua_State *L)
{
	return kmod_crc_table(L, 0);
}

/***
 * The symbols a .ko exports, with their CRCs (0 without CONFIG_MODVERSIONS); empty for
 * a module that exports none.
 * @function symbols
 * @tparam string path
 * @treturn[1] table `{ [symbol] = crc (integer) }`
 * @treturn[2] nil, string message, string errno
 * @see kmod_module_get_symbols(3)
 */
static int kmod_l_symbols(lua_State *L)
{
	return kmod_crc_table(L, 1);
}

/* ---- concurrently, each as soon as what it comes after is done ------------ */

struct job {
	const char *key;	/* what `after` lists name it by: its name, unless said */
	const char *name;
	const char *path;	/* insert: the .ko; remove: NULL */
	const char *options;
	int fd;			/* insert: the .ko opened before the first job starts, or -1 (errno in err) */
	int err;		/* 0, or the errno of the call (ECANCELED: not tried, see blocker) */
	int nafter;		/* the jobs that must succeed first: after[0..nafter) */
	int *after;
	int blocker;		/* ECANCELED: the one of them that did not */
	int state;		/* under sched.lock */
};

enum { JOB_WAITING, JOB_STARTED, JOB_DONE };

/* Most threads a run of jobs starts: a stack's graph is seldom wider. */
#define MAX_WORKERS 8

/* The jobs and the workers that run them (kmod_run_jobs). */
struct sched {
	pthread_mutex_t lock;
	pthread_cond_t changed;	/* a job is done, or a worker has nothing left to do */
	struct job *jobs;
	int n, left, running, max;
	int go;			/* every worker is started: jobs may begin */
};

static int kmod_finit_flags(const char *path)
{
	size_t n = strlen(path);

	if ((n > 3 && strcmp(path + n - 3, ".xz") == 0) || (n > 4 && strcmp(path + n - 4, ".zst") == 0) ||
	    (n > 3 && strcmp(path + n - 3, ".gz") == 0))
		return MODULE_INIT_COMPRESSED_FILE;
	return 0;
}

static void kmod_insert_job(struct job *j)
{
	if (j->fd < 0)
		return;	/* the open failed: j->err */
	if (syscall(SYS_finit_module, j->fd, j->options ? j->options : "", kmod_finit_flags(j->path)) < 0)
		j->err = errno == EEXIST ? 0 : errno;
	close(j->fd);
	j->fd = -1;
}

static void kmod_remove_job(struct job *j)
{
	if (syscall(SYS_delete_module, j->name, O_NONBLOCK) < 0)
		j->err = errno;
}

/* 1 when every job j comes after succeeded, -1 when one failed (j->blocker), 0 while one runs. */
static int kmod_job_ready(struct job *jobs, struct job *j)
{
	for (int k = 0; k < j->nafter; k++) {
		struct job *d = &jobs[j->after[k]];

		if (d->state < JOB_DONE)
			return 0;
		if (d->err) {
			j->blocker = j->after[k];
			return -1;
		}
	}
	return 1;
}

/* The first job in the list that may start now, or NULL; those that never can (one they come
 * after failed) are done, ECANCELED. Called with s->lock held. */
static struct job *kmod_next_job(struct sched *s)
{
	for (int i = 0; i < s->n; i++) {
		struct job *j = &s->jobs[i];
		int ready = j->state == JOB_WAITING ? kmod_job_ready(s->jobs, j) : 0;

		if (ready < 0) {
			j->err = ECANCELED;
			j->state = JOB_DONE;
			s->left--;
		} else if (ready > 0 && (!s->max || s->running < s->max)) {
			return j;
		}
	}
	return NULL;
}

/* A worker: once every worker is started, runs jobs as they become ready until none is left.
 * The one that finishes a job starts the next ready one itself, a dependent usually: no hand-over
 * to another thread. */
static void *kmod_worker(void *arg)
{
	struct sched *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->go)
		pthread_cond_wait(&s->changed, &s->lock);
	while (s->left > 0) {
		struct job *j = kmod_next_job(s);

		if (!j) {
			if (s->left > 0)
				pthread_cond_wait(&s->changed, &s->lock);
			continue;
		}
		j->state = JOB_STARTED;
		s->running++;
		pthread_mutex_unlock(&s->lock);
		if (j->path)
			kmod_insert_job(j);
		else
			kmod_remove_job(j);
		pthread_mutex_lock(&s->lock);
		j->state = JOB_DONE;
		s->running--;
		s->left--;
		pthread_cond_broadcast(&s->changed);
	}
	pthread_cond_broadcast(&s->changed);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Run every job (path set: insert, else remove), each once the jobs it comes after have succeeded
 * (one that failed: not run, ECANCELED), at most max at once (0: no limit); returns when all are
 * done. The workers (this thread one of them) are all started before the first job: a thread's
 * start, a millisecond in an emulated guest, is not spent while a stack is down. */
static void kmod_run_jobs(struct job *jobs, int n, int max)
{
	struct sched s = { .jobs = jobs, .n = n, .left = n, .max = max };
	pthread_t threads[MAX_WORKERS];
	int want = max && max < n ? max : n, started = 0;

	for (int i = 0; i < n; i++) {	/* opened now, not while the old stack is unloaded and the new one not in */
		jobs[i].fd = jobs[i].path ? open(jobs[i].path, O_RDONLY | O_CLOEXEC) : -1;
		if (jobs[i].path && jobs[i].fd < 0)
			jobs[i].err = errno;
	}
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.changed, NULL);
	if (want > MAX_WORKERS)
		want = MAX_WORKERS;
	while (started < want - 1 && pthread_create(&threads[started], NULL, kmod_worker, &s) == 0)
		started++;
	pthread_mutex_lock(&s.lock);
	s.go = 1;
	pthread_cond_broadcast(&s.changed);
	pthread_mutex_unlock(&s.lock);
	kmod_worker(&s);
	for (int i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	for (int i = 0; i < n; i++)	/* jobs not run (one they came after failed) */
		if (jobs[i].fd >= 0)
			close(jobs[i].fd);
	pthread_cond_destroy(&s.changed);
	pthread_mutex_destroy(&s.lock);
}

/* The message for a job that failed, pushed. */
static void kmod_push_job_error(lua_State *L, struct job *jobs, struct job *j, const char *sysfs)
{
	int removing = !j->path;
	struct job *b = j->err == ECANCELED ? &jobs[j->blocker] : NULL;

	if (b && removing)
		lua_pushfstring(L, "%s: not unloaded: %s, which holds it, was not", j->name, b->name);
	else if (b && !b->path)
		lua_pushfstring(L, "%s: not loaded: %s, which it waits for, was not unloaded", j->name, b->name);
	else if (b)
		lua_pushfstring(L, "%s: not loaded: it needs %s, which did not load", j->name, b->name);
	else if (removing && (j->err == EWOULDBLOCK || j->err == EBUSY))
		kmod_push_busy(L, sysfs, j->name);
	else if (removing && j->err == ENOENT)
		lua_pushfstring(L, "%s: not loaded", j->name);
	else if (removing)
		lua_pushfstring(L, "%s: %s", j->name, strerror(j->err));
	else if (j->err == ENOENT && access(j->path, F_OK) < 0)
		lua_pushfstring(L, "%s: %s: no such file", j->name, j->path);
	else
		kmod_push_insert_error(L, j->name, j->err);
}

/* Return the results of jobs: true, or nil, joined message, first errno, failures. */
static int kmod_jobs_result(lua_State *L, struct job *jobs, int n, const char *sysfs)
{
	int first = 0, failures;
	luaL_Buffer b;

	lua_newtable(L);
	failures = lua_gettop(L);
	for (int i = 0; i < n; i++) {
		if (!jobs[i].err)
			continue;
		if (!first || first == ECANCELED)
			first = jobs[i].err;
		kmod_push_job_error(L, jobs, &jobs[i], sysfs);
		lua_setfield(L, failures, jobs[i].key);
	}
	if (!first) {
		lua_pop(L, 1);
		return drv_ok(L);
	}
	lua_pushnil(L);
	luaL_buffinit(L, &b);
	for (int i = 0, k = 0; i < n; i++) {
		if (!jobs[i].err)
			continue;
		if (k++)
			luaL_addstring(&b, "; ");
		lua_getfield(L, failures, jobs[i].key);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	drv_push_errname(L, first);
	lua_pushvalue(L, failures);
	return 4;
}

static const char *kmod_item_string(lua_State *L, int item, const char *key, int required, int i)
{
	const char *v = NULL;
	int t = lua_getfield(L, item, key);

	if (t == LUA_TSTRING)
		v = lua_tostring(L, -1);
	else if (t != LUA_TNIL || required)
		luaL_argerror(L, 1, lua_pushfstring(L, "item %d: field '%s': string expected, got %s",
						     i, key, lua_typename(L, t)));
	lua_pop(L, 1); /* the item table keeps the string alive */
	return v;
}

static struct job *kmod_new_jobs(lua_State *L, int *n)
{
	lua_Integer len;
	struct job *jobs;

	luaL_checktype(L, 1, LUA_TTABLE);
	len = luaL_len(L, 1);
	luaL_argcheck(L, len > 0 && len <= 4096, 1, "1 to 4096 items expected");
	jobs = lua_newuserdatauv(L, sizeof(*jobs) * (size_t)len, 0);
	memset(jobs, 0, sizeof(*jobs) * (size_t)len);
	*n = (int)len;
	return jobs;
}

/* The parallel field of the options at idx: how many items may run at once (0: no limit). */
static int kmod_opt_parallel(lua_State *L, int idx)
{
	int opts = drv_opttable(L, idx);
	lua_Integer n = opts ? drv_optfield_integer(L, opts, "parallel", 0) : 0;

	luaL_argcheck(L, n >= 0 && n <= 4096, idx, "field 'parallel': 0 (no limit) to 4096 expected");
	return (int)n;
}

/* The `after` lists of the items (tables or strings) of the list at index 1: the indices of the
 * items they name, in a userdata left on the stack; raises on a name that is not an item's, an
 * item named twice, and a cycle. */
static void kmod_jobs_after(lua_State *L, struct job *jobs, int n)
{
	int names, total = 0, *slots, i, k;

	lua_createtable(L, 0, n);
	names = lua_gettop(L);
	for (i = 0; i < n; i++) {
		luaL_argcheck(L, lua_getfield(L, names, jobs[i].key) == LUA_TNIL, 1,
			      lua_pushfstring(L, "item %d: %s is named twice", i + 1, jobs[i].key));
		lua_pop(L, 1);
		lua_pushinteger(L, i);
		lua_setfield(L, names, jobs[i].key);
		if (lua_rawgeti(L, 1, i + 1) == LUA_TTABLE && lua_getfield(L, -1, "after") != LUA_TNIL) {
			luaL_argcheck(L, lua_istable(L, -1), 1, lua_pushfstring(L, "item %d: field 'after': table expected", i + 1));
			total += (int)luaL_len(L, -1);
		}
		lua_settop(L, names);
	}
	slots = lua_newuserdatauv(L, sizeof(int) * (size_t)(total ? total : 1), 0);
	for (i = 0; i < n; i++) {
		if (lua_rawgeti(L, 1, i + 1) != LUA_TTABLE || lua_getfield(L, -1, "after") == LUA_TNIL) {
			lua_settop(L, names + 1);
			continue;
		}
		jobs[i].after = slots;
		for (k = 1; k <= (int)luaL_len(L, -1); k++) {
			const char *dep = lua_rawgeti(L, -1, k) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;

			luaL_argcheck(L, dep && lua_getfield(L, names, dep) == LUA_TNUMBER, 1,
				      lua_pushfstring(L, "item %d: field 'after': %s is not an item", i + 1,
						      dep ? dep : luaL_typename(L, -1)));
			*slots++ = (int)lua_tointeger(L, -1);
			jobs[i].nafter++;
			lua_pop(L, 2);
		}
		lua_settop(L, names + 1);
	}
	lua_remove(L, names);
	/* A cycle would wait forever: every job must come after jobs that can be done first. */
	for (int marked = 0, progress = 1; progress;) {
		progress = 0;
		for (i = 0; i < n; i++) {
			for (k = 0; jobs[i].state == JOB_WAITING && k < jobs[i].nafter && jobs[jobs[i].after[k]].state; k++)
				;
			if (jobs[i].state == JOB_WAITING && k == jobs[i].nafter) {
				jobs[i].state = JOB_STARTED; /* marked; reset below */
				progress = 1;
				marked++;
			}
		}
		if (!progress && marked < n) {
			for (i = 0; jobs[i].state; i++)
				;
			luaL_argerror(L, 1, lua_pushfstring(L, "item %d: field 'after': %s is in a cycle", i + 1, jobs[i].key));
		}
	}
	for (i = 0; i < n; i++)
		jobs[i].state = JOB_WAITING;
}

/***
 * Insert modules concurrently: finit_module(2) for each item (threads of a pool), started as
 * soon as the items it comes after are loaded (all at once when none says: a dependency level).
 * No dependency lookup: say what comes after what. A module already loaded is success.
 * @function insert_many
 * @tparam table items `{ { name = "ib_umad", path = "/…/ib_umad.ko", options = "…", after = { "ib_core" } }… }`
 *   (after: names of other items, which must be loaded first; one that fails leaves this one untried)
 * @tparam[opt] table opts `{ parallel = n }`: at most n at once (0: no limit); of the items ready to
 *   start, the first in the list first
 * @treturn[1] true
 * @treturn[2] nil, "a: …; b: not loaded: it needs a, which did not load", first errno, `{ [name] = message }`
 * @see finit_module(2)
 */
static int kmod_l_insert_many(lua_State *L)
{
	int max = kmod_opt_parallel(L, 2), n;
	struct job *jobs = (lua_settop(L, 1), kmod_new_jobs(L, &n));

	for (int i = 0; i < n; i++) {
		luaL_argcheck(L, lua_rawgeti(L, 1, i + 1) == LUA_TTABLE, 1,
			      lua_pushfstring(L, "item %d: table expected", i + 1));
		jobs[i].path = kmod_item_string(L, lua_gettop(L), "path", 1, i + 1);
		jobs[i].name = kmod_item_string(L, lua_gettop(L), "name", 0, i + 1);
		jobs[i].options = kmod_item_string(L, lua_gettop(L), "options", 0, i + 1);
		if (!jobs[i].name)
			jobs[i].name = jobs[i].path;
		jobs[i].key = jobs[i].name;
		lua_pop(L, 1);
	}
	kmod_jobs_after(L, jobs, n);
	kmod_run_jobs(jobs, n, max);
	return kmod_jobs_result(L, jobs, n, "/sys");
}

/***
 * Remove modules concurrently: delete_module(2) for each (threads of a pool), started as soon as
 * the items it comes after are unloaded (all at once when none says: a dependency level).
 * @function remove_many
 * @tparam table items `{ "rdma_ucm", "mlx5_ib" }`, or `{ { name = "ib_core", after = { "rdma_ucm" } }… }`
 *   (after: names of other items, its holders, which must be unloaded first)
 * @tparam[opt] table opts `{ parallel = n }`, as insert_many
 * @treturn[1] true
 * @treturn[2] nil, "a: in use by …; b: not unloaded: a, which holds it, was not", first errno,
 *   `{ [name] = message }`
 * @see delete_module(2)
 */
static int kmod_l_remove_many(lua_State *L)
{
	int max = kmod_opt_parallel(L, 2), n;
	struct job *jobs = (lua_settop(L, 1), kmod_new_jobs(L, &n));

	for (int i = 0; i < n; i++) {
		int t = lua_rawgeti(L, 1, i + 1);

		if (t == LUA_TTABLE)
			jobs[i].name = kmod_item_string(L, lua_gettop(L), "name", 1, i + 1);
		else if (t == LUA_TSTRING)
			jobs[i].name = lua_tostring(L, -1);
		else
			luaL_argerror(L, 1, lua_pushfstring(L, "item %d: string or table expected, got %s",
							     i + 1, luaL_typename(L, -1)));
		jobs[i].key = jobs[i].name;
		lua_pop(L, 1);
	}
	kmod_jobs_after(L, jobs, n);
	kmod_run_jobs(jobs, n, max);
	return kmod_jobs_result(L, jobs, n, "/sys");
}

/***
 * Unload and load modules concurrently, in one graph: each item with a `path` is loaded
 * (finit_module(2)), each without one unloaded (delete_module(2)), started as soon as the items it
 * comes after are done (all at once when none says). A swap's loads need not wait for every
 * unload: a module waits for its dependencies' loads and for the unloads of what it replaces.
 * @function change_many
 * @tparam table items `{ { key = "-ib_core", name = "ib_core", after = { "-rdma_cm" } },
 *   { name = "ib_core", path = "/…/ib_core.ko", options = "…", after = { "-ib_core" } }… }`
 *   (key: what `after` lists call the item, its name when not given: an unload and a load of one
 *   module need distinct keys)
 * @tparam[opt] table opts `{ parallel = n }`, as insert_many
 * @treturn[1] true
 * @treturn[2] nil, "a: …; b: not loaded: a, which it waits for, was not unloaded", first errno,
 *   `{ [key] = message }`
 */
static int kmod_l_change_many(lua_State *L)
{
	int max = kmod_opt_parallel(L, 2), n;
	struct job *jobs = (lua_settop(L, 1), kmod_new_jobs(L, &n));

	for (int i = 0; i < n; i++) {
		luaL_argcheck(L, lua_rawgeti(L, 1, i + 1) == LUA_TTABLE, 1,
			      lua_pushfstring(L, "item %d: table expected", i + 1));
		jobs[i].name = kmod_item_string(L, lua_gettop(L), "name", 1, i + 1);
		jobs[i].path = kmod_item_string(L, lua_gettop(L), "path", 0, i + 1);
		jobs[i].options = kmod_item_string(L, lua_gettop(L), "options", 0, i + 1);
		jobs[i].key = kmod_item_string(L, lua_gettop(L), "key", 0, i + 1);
		if (!jobs[i].key)
			jobs[i].key = jobs[i].name;
		lua_pop(L, 1);
	}
	kmod_jobs_after(L, jobs, n);
	kmod_run_jobs(jobs, n, max);
	return kmod_jobs_result(L, jobs, n, "/sys");
}

static const luaL_Reg kmod_ctx_methods[] = {
	{ "dirname", kmod_m_dirname },
	{ "lookup", kmod_m_lookup },
	{ "info", kmod_m_info },
	{ "state", kmod_m_state },
	{ "loaded", kmod_m_loaded },
	{ "insert", kmod_m_insert },
	{ "remove", kmod_m_remove },
	{ "close", kmod_ctx_gc },
	{ NULL, NULL }
};

static const luaL_Reg kmod_ctx_meta[] = {
	{ "__gc", kmod_ctx_gc },
	{ "__close", kmod_ctx_gc },
	{ "__tostring", kmod_ctx_tostring },
	{ NULL, NULL }
};

static const luaL_Reg kmod_held_meta[] = {
	{ "__gc", kmod_held_gc },
	{ NULL, NULL }
};

static const luaL_Reg kmod_funcs[] = {
	{ "new", kmod_l_new },
	{ "modinfo", kmod_l_modinfo },
	{ "versions", kmod_l_versions },
	{ "symbols", kmod_l_symbols },
	{ "insert_many", kmod_l_insert_many },
	{ "remove_many", kmod_l_remove_many },
	{ "change_many", kmod_l_change_many },
	{ NULL, NULL }
};

int luaopen_drv_kmod(lua_State *L)
{
	drv_newclass(L, CTX_MT, kmod_ctx_methods, kmod_ctx_meta);
	drv_newclass(L, HELD_MT, NULL, kmod_held_meta);
	luaL_newlib(L, kmod_funcs);
	return 1;
}
