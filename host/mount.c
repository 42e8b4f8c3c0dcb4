/* mount.c - drv.mount (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_mount(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
