#!/bin/sh
# bench/seq-build.sh KDIR SRC MODULE... — the seed's way of building a driver
# bundle: one `make` per module, in dependency order, each against the
# Module.symvers of those built before it. A baseline for `make bench`.
set -eu
kdir=$1 src=$2
shift 2
symvers=
for m in "$@"; do
	make -s -C "$kdir" M="$src/src/$m" KBUILD_EXTRA_SYMBOLS="$symvers" modules
	symvers="$symvers $src/src/$m/Module.symvers"
done
