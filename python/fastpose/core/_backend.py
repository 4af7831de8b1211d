"""Backend selection and the array plumbing shared by every ``fastpose.core`` operation.

The native extension ``fastpose._core`` takes raw data pointers.  This module turns user inputs
(NumPy arrays, PyTorch tensors on CPU or CUDA, or any object with ``__cuda_array_interface__`` /
DLPack) into contiguous arrays of the dtype an operation needs, on the device it will run on, and
hands back outputs of the same kind as the inputs:

* NumPy in -> NumPy out (computed on the GPU when the backend resolves to ``"cuda"``);
* a torch tensor in -> a torch tensor out, on the input's device;
* another CUDA array (CuPy, ...) in -> a torch CUDA tensor out (zero-copy input via DLPack).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional, Sequence, Tuple

import numpy as np

from .. import _core

log = logging.getLogger("fastpose.core")

BackendName = Literal["auto", "cpu", "cuda"]
_requested: str = "auto"


def _torch():
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is a dependency, but the core works without it
        return None
    return torch


def cuda_compiled() -> bool:
    """True when this copy of fastpose was built with CUDA kernels."""
    return bool(_core.cuda_compiled())


def cuda_available() -> bool:
    """True when CUDA kernels are built in, a GPU is present, and PyTorch can use it."""
    if not _core.cuda_available():
        return False
    torch = _torch()
    return bool(torch is not None and torch.cuda.is_available())


def set_backend(name: BackendName = "auto") -> None:
    """Choose where operations on host (NumPy) inputs run.

    ``"auto"`` (default) uses the GPU when :func:`cuda_available`, else the CPU; ``"cpu"`` forces the
    OpenMP CPU backend; ``"cuda"`` requires a GPU and raises if there is none.  Inputs that already
    live on a GPU always run there.
    """
    global _requested
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not cuda_available():
        why = ("fastpose was built without CUDA kernels" if not cuda_compiled()
               else "no usable CUDA GPU/driver (or PyTorch without CUDA) was found")
        raise RuntimeError(f"set_backend('cuda'): {why}")
    _requested = name


def backend() -> str:
    """The backend host inputs run on now: ``"cuda"`` or ``"cpu"``."""
    if _requested == "cpu":
        return "cpu"
    if _requested == "cuda":
        return "cuda"
    return "cuda" if cuda_available() else "cpu"


@contextlib.contextmanager
def use_backend(name: BackendName) -> Iterator[None]:
    """Context manager: run the enclosed operations on backend ``name``."""
    global _requested
    old = _requested
    set_backend(name)
    try:
        yield
    finally:
        _requested = old


# ------------------------------------------------------------------------------------------------
# Inputs and outputs
# ------------------------------------------------------------------------------------------------

def _is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _is_cuda_object(x: Any) -> bool:
    if _is_torch(x):
        return x.is_cuda
    return hasattr(x, "__cuda_array_interface__")


@dataclass(frozen=True)
class Placement:
    """Where a call runs and what kind of arrays it returns."""

    device: str  # "cpu" or "cuda"
    out_kind: str  # "numpy" or "torch"
    torch_device: Any = None  # torch.device for CUDA work / torch outputs

    def exec_args(self, num_threads: int = 0) -> Tuple[int, int, int]:
        """(device, stream, num_threads) for the native call."""
        if self.device == "cuda":
            torch = _torch()
            stream = torch.cuda.current_stream(self.torch_device).cuda_stream
            return 1, int(stream), num_threads
        return 0, 0, num_threads


def placement(*inputs: Any) -> Placement:
    """Decide where a call with these inputs runs (GPU inputs win; else the current backend)."""
    torch = _torch()
    cuda_inputs = [x for x in inputs if x is not None and _is_cuda_object(x)]
    any_torch = any(_is_torch(x) for x in inputs if x is not None)
    if cuda_inputs:
        if not cuda_compiled():
            raise RuntimeError("a CUDA array was passed, but fastpose was built without CUDA kernels; "
                               "pass NumPy arrays or rebuild fastpose with nvcc available")
        if torch is None:
            raise RuntimeError("CUDA arrays need PyTorch installed")
        devs = set()
        for x in cuda_inputs:
            devs.add(x.device if _is_torch(x) else torch.device("cuda", torch.cuda.current_device()))
        if len(devs) > 1:
            raise ValueError(f"inputs live on different devices: {sorted(map(str, devs))}")
        return Placement("cuda", "torch", devs.pop())
    if any_torch:
        if backend() == "cuda":
            return Placement("cuda", "torch_cpu", torch.device("cuda", torch.cuda.current_device()))
        return Placement("cpu", "torch_cpu", None)
    if backend() == "cuda":
        return Placement("cuda", "numpy", torch.device("cuda", torch.cuda.current_device()))
    return Placement("cpu", "numpy", None)


def _np_dtype_name(dt: Any) -> str:
    return str(dt).replace("torch.", "")


def prepare(x: Any, name: str, dtype: Any, where: Placement, *, integer: bool = False) -> Any:
    """Return ``x`` as a contiguous array of ``dtype`` on ``where`` (NumPy for CPU, torch for CUDA).

    ``integer=True`` refuses non-integer inputs (for label images) instead of casting them.
    Raises ValueError with the offending name for objects that are not arrays.
    """
    torch = _torch()
    if x is None:
        raise ValueError(f"{name} is required")
    if hasattr(x, "__cuda_array_interface__") and not _is_torch(x):
        x = torch.as_tensor(x, device=where.torch_device)
    if _is_torch(x):
        if integer and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer label array, got dtype {_np_dtype_name(x.dtype)}")
        if where.device == "cuda":
            tdt = _torch_dtype(dtype)
            return x.to(device=where.torch_device, dtype=tdt).contiguous()
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything NumPy cannot read is a user error here
        raise ValueError(f"{name} could not be read as an array: {e}") from None
    if a.dtype == object or a.dtype.kind in "USVMm":
        raise ValueError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if integer and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label array, got dtype {a.dtype}")
    if a.dtype.kind == "c":
        raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)
    if where.device == "cuda":
        return torch.from_numpy(a).to(where.torch_device)
    return a


def _torch_dtype(dtype: Any):
    torch = _torch()
    return {np.float32: torch.float32, np.int32: torch.int32, np.uint8: torch.uint8,
            np.int64: torch.int64}[np.dtype(dtype).type]


def empty(shape: Sequence[int], dtype: Any, where: Placement, zero: bool = False) -> Any:
    """An output array on ``where``."""
    if where.device == "cuda":
        torch = _torch()
        f = torch.zeros if zero else torch.empty
        return f(tuple(int(s) for s in shape), dtype=_torch_dtype(dtype), device=where.torch_device)
    return (np.zeros if zero else np.empty)(tuple(int(s) for s in shape), dtype=dtype)


def ptr(a: Any) -> int:
    """Raw data pointer of a contiguous NumPy array or torch tensor (0 for empty arrays)."""
    if isinstance(a, np.ndarray):
        return int(a.ctypes.data)
    return int(a.data_ptr())


def finish(a: Any, where: Placement) -> Any:
    """Turn a computed array into the kind the caller passed in."""
    if where.out_kind == "numpy":
        if isinstance(a, np.ndarray):
            return a
        return a.cpu().numpy()
    if where.out_kind == "torch_cpu":
        torch = _torch()
        return a.cpu() if _is_torch(a) else torch.from_numpy(a)
    return a


def any_nonfinite(a: Any) -> bool:
    """True when a float array has NaN or Inf."""
    if isinstance(a, np.ndarray):
        return not bool(np.isfinite(a).all())
    torch = _torch()
    return not bool(torch.isfinite(a).all().item())


def shape_tuple(spatial: Sequence[int]) -> Tuple[int, int, int, int]:
    """(ndim, z, y, x) for the native layer from a 2D or 3D spatial shape."""
    if len(spatial) == 2:
        return (2, 1, int(spatial[0]), int(spatial[1]))
    if len(spatial) == 3:
        return (3, int(spatial[0]), int(spatial[1]), int(spatial[2]))
    raise ValueError(f"expected a 2D (Y, X) or 3D (Z, Y, X) image, got shape {tuple(spatial)}")


def device_guard(where: Placement):
    """Context that makes the input's GPU current for the native call (no-op on the CPU)."""
    if where.device == "cuda":
        return _torch().cuda.device(where.torch_device)
    return contextlib.nullcontext()


def check_spatial(a: Any, name: str, ndims: Sequence[int] = (2, 3)) -> Tuple[int, ...]:
    shp = tuple(int(s) for s in a.shape)
    if len(shp) not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got an array of shape {shp}")
    return shp


def labels_max(a: Any) -> int:
    if isinstance(a, np.ndarray):
        return int(a.max()) if a.size else 0
    return int(a.max().item()) if a.numel() else 0


def labels_min(a: Any) -> int:
    if isinstance(a, np.ndarray):
        return int(a.min()) if a.size else 0
    return int(a.min().item()) if a.numel() else 0


def prepare_labels(x: Any, name: str, where: Placement) -> Any:
    """Validate a label image (integer, >= 0, fits int32) and return it as contiguous int32."""
    torch = _torch()
    if _is_torch(x) or hasattr(x, "__cuda_array_interface__"):
        if hasattr(x, "__cuda_array_interface__") and not _is_torch(x):
            x = torch.as_tensor(x, device=where.torch_device)
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer label array, got dtype {_np_dtype_name(x.dtype)}")
        raw = x
    else:
        raw = np.asarray(x)
        if raw.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer label array, got dtype {raw.dtype}")
    if (raw.numel() if _is_torch(raw) else raw.size):
        lo = int(raw.min().item()) if _is_torch(raw) else int(raw.min())
        hi = int(raw.max().item()) if _is_torch(raw) else int(raw.max())
        if lo < 0:
            raise ValueError(f"{name} has negative labels (min {lo}); labels must be >= 0 with 0 = background")
        if hi > np.iinfo(np.int32).max:
            raise ValueError(f"{name} has labels above 2**31 - 1 (max {hi}); relabel them first")
    return prepare(raw, name, np.int32, where, integer=True)


OptionalArray = Optional[Any]
