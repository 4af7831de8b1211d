"""Time the native core on a 2048x2048 image with ~4700 cells (and a 3D volume), side by side with
Cellpose's own functions when `cellpose` is importable.  Same as `fastpose-bench core --3d`.

    python bench/bench_core.py [--device cpu|cuda|auto] [--json results.json]
"""
import sys

from fastpose.bench import main

if __name__ == "__main__":
    sys.exit(main(["core", "--3d", *sys.argv[1:]]))
