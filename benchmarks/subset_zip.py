"""The part of the CIFAR zip that protocol Q reads, as a smaller zip to carry to a GPU machine.

A long-tailed Q split keeps the first ``n_i <= n_max`` training files of each class in sorted name order
(../shared/BENCHMARKS.md), so the first ``n_max`` files per class plus the whole test tree give the same
data (17.7 MB instead of 53 MB for n_max 1000, under the device's 64 MiB limit with the wheels beside it):

    python benchmarks/subset_zip.py ../shared/data/cifar10-jpg.zip .dev/cifar10-q.zip --n-max 1000

Write the result outside git (``.dev/`` is in ``.git/info/exclude``): it is derived from CIFAR-10.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections import defaultdict
from pathlib import Path


def subset_names(names: list[str], n_max: int) -> list[str]:
    """The members to keep: every ``test/<class>/*`` image and the first ``n_max`` (sorted) of each
    ``train/<class>/``; directory entries and other files are dropped."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for name in names:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in ("train", "test") and not name.endswith("/"):
            by_folder["/".join(parts[:-1])].append(name)
    keep: list[str] = []
    for folder, files in by_folder.items():
        files.sort()
        keep += files if folder.split("/")[-2] == "test" else files[:n_max]
    return sorted(keep)


def write_subset(src: Path, dst: Path, n_max: int) -> int:
    """Copy the kept members of ``src`` to a new zip ``dst`` (stored, JPEG does not compress); their count."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        keep = subset_names(zin.namelist(), n_max)
        for name in keep:
            zout.writestr(zin.getinfo(name), zin.read(name))
    return len(keep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--n-max", type=int, default=1000, help="training images kept per class (Q's n_max)")
    a = p.parse_args(argv)
    if not a.src.exists():
        print(f"error: {a.src} not found", file=sys.stderr)
        return 2
    print(f"{write_subset(a.src, a.dst, a.n_max)} images -> {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
