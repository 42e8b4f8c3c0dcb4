#!/bin/sh
# bench/seed-reload.sh "UNLOAD..." "LOAD..." — the seed's way of swapping a
# module stack, as driver-container entrypoints (openibd) do it: unload each
# module after whatever holds it, recursively, reading the holders from
# /proc/modules; then modprobe each module of the new stack, one at a time.
# A baseline for `make bench`: written the way the seed writes it.
set -u

is_loaded() {
	grep -q "^$1 " /proc/modules
}

holders() {
	awk -v m="$1" '$1 == m && $4 != "-" { gsub(",", " ", $4); print $4 }' /proc/modules
}

unload() {
	is_loaded "$1" || return 0
	for h in $(holders "$1"); do
		unload "$h" || return 1
	done
	rmmod "$1"
}

for m in $1; do
	unload "$m" || exit 1
done
for m in $2; do
	modprobe "$m" || exit 1
done
