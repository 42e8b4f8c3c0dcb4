#!/bin/sh
# bench/modprobe-reload.sh "UNLOAD..." "LOAD..." — swap a module stack with
# modprobe alone: `modprobe -r` of each loaded module, holders first (modprobe
# also removes what it depended on, once unused: those are skipped when their
# turn comes), then `modprobe` of each module at the top of the new stack
# (modprobe loads its dependencies). A baseline for `make bench`.
set -u
for m in $1; do
	if [ -d "/sys/module/$m" ]; then
		modprobe -r "$m" || exit 1
	fi
done
for m in $2; do
	modprobe "$m" || exit 1
done
