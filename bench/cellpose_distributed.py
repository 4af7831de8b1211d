"""Cellpose 3's ``cellpose.contrib.distributed_segmentation.distributed_eval`` on a mosaic, for the side-by-side
in ``bench/RESULTS.md`` (issue 15).  Runs in a Cellpose 3 environment (``build-cp3/``, with dask, distributed,
dask-image, zarr 2 and dask-jobqueue added), never in fastpose's:

    build-cp3/bin/python bench/cellpose_distributed.py MOSAIC.npy MODEL.pth OUT.npy BLOCK WORKERS

``MODEL.pth``: the bundled nuclei U-Net as a bare state dict (Cellpose's file format); evaluated at its own
scale (``diameter`` = its diam_mean, 17, so no resizing, as fastpose's blocks run; an int: Cellpose 3.1.1.3 uses 2 x diameter as a slice bound, and a float diameter crashes every block with "slice indices must be integers").  Writes the labels to ``OUT.npy``
and prints one JSON line: wall time, objects, Cellpose's version.
"""

import json
import sys
import tempfile
import time

import numpy as np


def main() -> None:
    src, model, out, block, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    import zarr
    import cellpose
    from cellpose.contrib.distributed_segmentation import distributed_eval

    img = np.load(src)
    with tempfile.TemporaryDirectory() as tmp:
        z = zarr.open(f"{tmp}/in.zarr", mode="w", shape=img.shape, chunks=(block, block), dtype=img.dtype)
        z[...] = img
        t0 = time.perf_counter()
        labels, boxes = distributed_eval(
            input_zarr=z, blocksize=(block, block), write_path=f"{tmp}/out.zarr",
            model_kwargs={"gpu": False, "pretrained_model": model},
            eval_kwargs={"diameter": 17, "channels": [0, 0], "z_axis": None, "do_3D": False},
            cluster_kwargs={"n_workers": workers, "ncpus": 1, "memory_limit": "8GB", "threads_per_worker": 1},
            temporary_directory=tmp)
        seconds = time.perf_counter() - t0
        lab = np.asarray(labels[...])
    np.save(out, lab)
    print(json.dumps({"seconds": round(seconds, 1), "objects": int(len(np.unique(lab)) - 1),
                      "cellpose": cellpose.version, "block": block, "workers": workers}))


if __name__ == "__main__":
    main()
