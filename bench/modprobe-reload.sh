#!/bin/sh
# bench/modprobe-reload.sh "TOP..." "LOAD..." — swap a module stack with
# modprobe alone: `modprobe -r` of the modules at the top of the loaded stack
# (modprobe removes what they depended on once unused), then `modprobe` of
# each module at the top of the new stack (modprobe loads its dependencies).
# A baseline for `make bench`.
set -u
# shellcheck disable=SC2086
modprobe -r $1 || exit 1
for m in $2; do
	modprobe "$m" || exit 1
done
