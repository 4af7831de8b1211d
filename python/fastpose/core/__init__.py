"""fastpose.core: the compiled mask-recovery core (CPU via OpenMP, CUDA when built with nvcc).

Operations accept NumPy arrays or PyTorch tensors (CPU or CUDA; other CUDA arrays through
``__cuda_array_interface__``/DLPack).  GPU inputs are processed on their GPU without host copies;
host inputs run on :func:`backend` (``"cuda"`` when a GPU is usable, else ``"cpu"``).
"""

from ._backend import backend, cuda_available, cuda_compiled, set_backend, use_backend
from .clustering import get_masks
from .flows import flow_errors, masks_to_flows, remove_bad_flow_masks
from .masks import fill_holes_and_remove_small_masks
from .meanshift import mean_shift
from .recover import compute_masks
from .tiles import TileGrid, blend_tiles, make_tiles
from .tracking import follow_flows, tracking_path

__all__ = [
    "backend", "set_backend", "use_backend", "cuda_available", "cuda_compiled",
    "masks_to_flows", "flow_errors", "remove_bad_flow_masks",
    "follow_flows", "tracking_path", "get_masks", "fill_holes_and_remove_small_masks",
    "make_tiles", "blend_tiles", "TileGrid", "compute_masks", "mean_shift",
]
