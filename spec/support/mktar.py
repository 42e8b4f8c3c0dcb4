#!/usr/bin/env python3
"""mktar.py OUT.tgz ENTRY...: write a gzip tarball with exactly these entries,
evil ones included (tar(1) refuses to create them). ENTRY is one of
  file:PATH:CONTENT[:MODE]   dir:PATH   sym:PATH:TARGET   hard:PATH:TARGET   chr:PATH
"""
import io
import sys
import tarfile

with tarfile.open(sys.argv[1], "w:gz") as t:
    for spec in sys.argv[2:]:
        kind, path, *rest = spec.split(":")
        ti = tarfile.TarInfo(path)
        if kind == "file":
            data = rest[0].encode()
            ti.size = len(data)
            ti.mode = int(rest[1], 8) if len(rest) > 1 else 0o644
            t.addfile(ti, io.BytesIO(data))
            continue
        ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                   "chr": tarfile.CHRTYPE}[kind]
        ti.mode = 0o755 if kind == "dir" else 0o644
        if rest:
            ti.linkname = rest[0]
        t.addfile(ti)
