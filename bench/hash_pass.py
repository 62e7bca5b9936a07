#!/usr/bin/env python3
"""What one sha256 pass over a model file costs here: the price of verifying an adopted file.

Three readings of the same hash loop the store uses (hashlib.sha256, 8 MiB readinto):

- sparse:     a sparse file of --size-gb (reads return zeros, no disk; on this VM zero-filling the
              holes is slower than reading a cached real file, so the next reading is the one to use);
- page cache: a real file of --real-gb, hashed twice, the second pass timed (already in memory);
- disk:       the same file after posix_fadvise(DONTNEED) dropped just its pages: the disk's speed
              (only this file's cache is dropped, nothing else on the machine is disturbed).

    .venv/bin/python bench/hash_pass.py [--size-gb 10] [--real-gb 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

CHUNK = 8 * 2**20


def hash_file(path: Path) -> float:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=10.0)
    p.add_argument("--real-gb", type=float, default=2.0)
    p.add_argument("--dir", default=tempfile.gettempdir())
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="i2v-hash-") as tmp:
        sparse = Path(tmp) / "sparse.bin"
        size = int(a.size_gb * 1e9)
        with open(sparse, "wb") as fh:
            fh.truncate(size)
        s = hash_file(sparse)
        print(f"sparse {size / 1e9:.1f} GB: {s:.2f} s = {size / s / 2**30:.2f} GiB/s (no disk; the kernel zero-fills "
              "every read of a hole, which can be slower than reading a cached real file)")
        real = Path(tmp) / "real.bin"
        rsize = int(a.real_gb * 1e9)
        block = os.urandom(CHUNK)
        with open(real, "wb") as fh:
            left = rsize
            while left > 0:
                left -= fh.write(block[:min(left, CHUNK)])
            fh.flush()
            os.fsync(fh.fileno())
        hash_file(real)
        hot = hash_file(real)
        print(f"page cache {rsize / 1e9:.1f} GB: {hot:.2f} s = {rsize / hot / 2**30:.2f} GiB/s "
              f"-> 10 GB in {hot * 10e9 / rsize:.1f} s")
        fd = os.open(real, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        cold = hash_file(real)
        print(f"disk (file's pages dropped) {rsize / 1e9:.1f} GB: {cold:.2f} s = {rsize / cold / 2**30:.2f} GiB/s "
              f"-> 10 GB in {cold * 10e9 / rsize:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
