-- drvrun PREFIX/share/drvrun/probe.lua [--sysfs DIR] READY_FILE
--
-- Exit 0 when the driver the ready file describes is still loaded as it says
-- (every module, same srcversion, same boot); 1 with one line saying what is
-- wrong; 2 on a usage error. For Kubernetes exec probes and Docker's
-- HEALTHCHECK. See lib/lua/drv/ready.lua.
os.exit(require("drv.ready").probe({ ... }))
