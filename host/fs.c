/* fs.c - drv.fs (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_fs(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
