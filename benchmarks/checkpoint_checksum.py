"""What a checksum of every checkpoint file costs, per GB, against writing the checkpoint.

Writes one safetensors file of --mib MiB (random fp32 weights) into --dir the way a checkpoint
is written (save_file, then fsync), then reads it back through each candidate checksum in the
chunks scalekd uses, the file in the page cache as it is right after a write. Prints a table:
seconds per GB, GB/s and the cost as a share of the write. The checkpoint marker uses
`scalekd.engine.checkpoint.CHECKSUM`.

    python benchmarks/checkpoint_checksum.py --mib 512 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from scalekd.engine.checkpoint import CHECKSUM, file_checksum

CHUNK = 8 << 20


def _running(update, start):
    def digest(path: Path) -> None:
        value = start
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                value = update(block, value)
    return digest


def _hashlib(name: str):
    def digest(path: Path) -> None:
        with open(path, "rb") as f:
            hashlib.file_digest(f, name)
    return digest


CANDIDATES = {
    "read only": _running(lambda block, value: value, 0),
    "zlib.adler32": _running(zlib.adler32, 1),
    "zlib.crc32": _running(zlib.crc32, 0),
    "blake2b": _hashlib("blake2b"),
    "md5": _hashlib("md5"),
    "sha256": _hashlib("sha256"),
    f"scalekd ({CHECKSUM})": file_checksum,
}


def best_of(repeats: int, fn) -> tuple[float, float]:
    """The fastest of `repeats` calls: wall seconds and this process's CPU seconds (the CPU
    figure holds up on a loaded machine, where the wall clock mostly measures waiting)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "model.safetensors"
        weights = {"w": torch.randn(args.mib << 18)}  # 4 bytes a value
        gb = args.mib * (1 << 20) / 1e9

        def write() -> None:
            save_file(weights, str(path))
            with open(path, "rb+") as f:
                os.fsync(f.fileno())

        write_s, write_cpu = best_of(args.repeats, write)
        print(f"file: {args.mib} MiB in {folder}; load average {os.getloadavg()[0]:.2f} on "
              f"{os.cpu_count()} cores")
        print(f"{'':24} {'s per GB':>9} {'GB/s':>7} {'of the write':>13} {'CPU s per GB':>13}")
        print(f"{'write (save_file+fsync)':24} {write_s / gb:9.3f} {gb / write_s:7.2f} "
              f"{'100%':>13} {write_cpu / gb:13.3f}")
        for name, digest in CANDIDATES.items():
            seconds, cpu = best_of(args.repeats, lambda: digest(path))
            print(f"{name:24} {seconds / gb:9.3f} {gb / seconds:7.2f} "
                  f"{100 * seconds / write_s:12.0f}% {cpu / gb:13.3f}")


if __name__ == "__main__":
    main()
