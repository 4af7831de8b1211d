"""Blockwise and many-file segmentation beyond one machine (Dask), with OME-Zarr in and out.

* :func:`segment_blocks`: a large 2D image or 3D volume (NumPy, dask, zarr) block by block, on this machine or a
  ``dask.distributed`` cluster, the labels equal to a whole-image run (:mod:`.blocks`).
* :func:`segment_zarr`: an OME-Zarr image or every field of an HCS plate into its ``labels/`` group;
  :func:`segment_files`: many files, one task each, resumable (:mod:`.runs`).
* :mod:`.omezarr`: OME-Zarr images and HCS plates in, label pyramids and per-object tables out.
* :mod:`.oracle`: a deterministic stand-in network for checking the blocks against whole images.

This package is the only part of fastpose that imports dask; it needs the ``distributed`` extra
(``pip install 'fastpose[distributed]'``: dask, distributed, zarr, ome-zarr).
"""

from .blocks import BlockGrid, BlockResult, BlockSource, HaloError, compact_ids, default_halo, segment_blocks

__all__ = ["segment_blocks", "BlockGrid", "BlockResult", "BlockSource", "HaloError", "compact_ids", "default_halo"]
from .runs import FileResult, make_client, segment_files, segment_zarr

__all__ += ["segment_zarr", "segment_files", "make_client", "FileResult"]
