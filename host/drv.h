/* drv.h - helpers shared by the drvrun host and its Lua modules. */
#ifndef DRV_H
#define DRV_H

#include <lua.h>
#include <lauxlib.h>
#include <time.h>

#define DRV_VERSION "0.1.0"

/* Push nil, a message built from fmt, and err's name ("ENOENT"); return 3 (the
 * failure shape of luv and liolib, with the errno's name in place of its number). */
int drv_fail(lua_State *L, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Push nil, "what: strerror(errno)", errno's name; return 3. Reads errno first. */
int drv_errno_fail(lua_State *L, const char *what);

/* Push the name of errno value err ("EINTR"), or "errno N" for a value Linux does not define. */
void drv_push_errname(lua_State *L, int err);

/* Push true; return 1. */
int drv_ok(lua_State *L);

/* Create (once) the metatable tname with methods reachable through __index
 * and the metamethods in meta; leaves nothing on the stack. */
void drv_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
		  const luaL_Reg *meta);

/* Optional field helpers for option tables at index idx (absolute). */
const char *drv_optfield_string(lua_State *L, int idx, const char *key, const char *def);
lua_Integer drv_optfield_integer(lua_State *L, int idx, const char *key, lua_Integer def);
lua_Number drv_optfield_number(lua_State *L, int idx, const char *key, lua_Number def);
int drv_optfield_boolean(lua_State *L, int idx, const char *key, int def);

/* Signal at idx: a name ("TERM", "SIGTERM") or a number; raises on an unknown name. */
int drv_checksignal(lua_State *L, int idx);

/* Read a small file (a sysfs attribute) into buf, trailing newline and blanks trimmed; 0 or -1 with errno. */
int drv_read_attr(const char *path, char *buf, size_t size);
/* All of the file at path (a /proc file: its size is not known), NUL-terminated, in a userdata
 * pushed onto the stack (the GC frees it; nothing raises while the file is open); its text, or
 * NULL with errno set and nothing pushed. */
char *drv_push_file(lua_State *L, const char *path);
/* A time in seconds, with fractions. */
double drv_seconds(const struct timespec *t);
/* Seconds on clock id (CLOCK_MONOTONIC for durations and deadlines), with fractions. */
double drv_clock(clockid_t id);

/* t (seconds since the epoch) as UTC, "2026-12-01T15:44:44Z", into buf. */
void drv_utc(long long t, char *buf, size_t size);

/* write(2) all of buf, retrying on EINTR; 0, or -1 with errno. */
int drv_write_all(int fd, const void *buf, size_t len);

/* Check that argument arg is a table or none/nil; return its absolute index or 0. */
int drv_opttable(lua_State *L, int arg);

/* luaopen functions of the C modules, preloaded by main.c. */
/* chunk.c: a Lua file from its compiled chunk FILE.luac while that is current
 * (else its source); compile FILE into FILE.luac, its chunk named "@name";
 * make require load modules through drv_loadfile. */
int drv_loadfile(lua_State *L, const char *path);
int drv_compile_file(lua_State *L, const char *path, const char *name);
void drv_use_compiled_chunks(lua_State *L);
/* Push a fresh environment for a script (chunk.environment). */
void drv_push_script_env(lua_State *L);

int luaopen_drv_chunk(lua_State *L);
int luaopen_drv_kmod(lua_State *L);
int luaopen_drv_mount(lua_State *L);
int luaopen_drv_transfer(lua_State *L);
int luaopen_drv_proc(lua_State *L);
int luaopen_drv_fs(lua_State *L);
int luaopen_drv_sys(lua_State *L);
int luaopen_drv_lock(lua_State *L);
int luaopen_drv_signal(lua_State *L);
int luaopen_drv_archive(lua_State *L);
int luaopen_drv_net(lua_State *L);
int luaopen_drv_keyctl(lua_State *L);
int luaopen_drv_cert(lua_State *L);

#endif
