/* archive.c - drv.archive (placeholder until the module lands). */
#include "drv.h"

int luaopen_drv_archive(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
