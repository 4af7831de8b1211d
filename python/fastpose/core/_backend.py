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
from typing import Any, Iterator, Literal, Sequence, Tuple

import numpy as np

from .. import _core
from .. import labels as _labels

log = logging.getLogger("fastpose.core")

BackendName = Literal["auto", "cpu", "cuda"]
_requested: str = "auto"


def torch_module():
    """The torch module, or None when PyTorch is not installed."""
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
    torch = torch_module()
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

def is_torch(x: Any) -> bool:
    """True for a torch.Tensor."""
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def _is_cuda_object(x: Any) -> bool:
    if is_torch(x):
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
            torch = torch_module()
            stream = torch.cuda.current_stream(self.torch_device).cuda_stream
            return 1, int(stream), num_threads
        return 0, 0, num_threads


def placement(*inputs: Any) -> Placement:
    """Decide where a call with these inputs runs (GPU inputs win; else the current backend)."""
    torch = torch_module()
    cuda_inputs = [x for x in inputs if x is not None and _is_cuda_object(x)]
    any_torch = any(is_torch(x) for x in inputs if x is not None)
    if cuda_inputs:
        if not cuda_compiled():
            raise RuntimeError("a CUDA array was passed, but fastpose was built without CUDA kernels; "
                               "pass NumPy arrays or rebuild fastpose with nvcc available")
        if torch is None:
            raise RuntimeError("CUDA arrays need PyTorch installed")
        devs = set()
        for x in cuda_inputs:
            devs.add(x.device if is_torch(x) else torch.device("cuda", torch.cuda.current_device()))
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
    torch = torch_module()
    if x is None:
        raise ValueError(f"{name} is required")
    if hasattr(x, "__cuda_array_interface__") and not is_torch(x):
        x = torch.as_tensor(x, device=where.torch_device)
    if is_torch(x):
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
    torch = torch_module()
    return {np.float32: torch.float32, np.int32: torch.int32, np.uint8: torch.uint8,
            np.int64: torch.int64}[np.dtype(dtype).type]


def empty(shape: Sequence[int], dtype: Any, where: Placement, zero: bool = False) -> Any:
    """An output array on ``where``."""
    if where.device == "cuda":
        torch = torch_module()
        f = torch.zeros if zero else torch.empty
        return f(tuple(int(s) for s in shape), dtype=_torch_dtype(dtype), device=where.torch_device)
    return (np.zeros if zero else np.empty)(tuple(int(s) for s in shape), dtype=dtype)


def _size(a: Any) -> int:
    return int(a.size) if isinstance(a, np.ndarray) else int(a.numel())


def ptr(a: Any) -> int:
    """Raw data pointer of a contiguous NumPy array or torch tensor (0 for empty arrays: the native layer
    returns before touching them)."""
    if not _size(a):
        return 0
    if isinstance(a, np.ndarray):
        return int(a.ctypes.data)
    return int(a.data_ptr())


def call(where: Placement, fn: Any, *args: Any, num_threads: int = 0) -> Any:
    """``fn(*args, device, stream, num_threads)`` for a native op, with the input's GPU current (see
    :func:`device_guard`); returns what ``fn`` returns."""
    with device_guard(where):
        return fn(*args, *where.exec_args(num_threads))


def finish(a: Any, where: Placement) -> Any:
    """Turn a computed array into the kind the caller passed in."""
    if where.out_kind == "numpy":
        if isinstance(a, np.ndarray):
            return a
        return a.cpu().numpy()
    if where.out_kind == "torch_cpu":
        torch = torch_module()
        return a.cpu() if is_torch(a) else torch.from_numpy(a)
    return a


def finish_labels(labels: Any, n: int, where: Placement) -> Any:
    """Turn a computed int32 label image with masks 1..n into the kind the caller passed in: for NumPy callers
    an array of :func:`fastpose.labels.labels_dtype` (uint16, or uint32 beyond 65535 masks, with a warning),
    for torch callers the int32 tensor."""
    if where.out_kind != "numpy":
        return finish(labels, where)
    if n > np.iinfo(np.uint16).max:
        log.warning("%d masks in the image: labels returned as uint32", n)
    return finish(labels, where).astype(_labels.labels_dtype(n), copy=False)


#: elements per chunk of :func:`any_nonfinite` on NumPy arrays (its boolean temporary stays this small)
_FINITE_CHUNK = 1 << 20


def any_nonfinite(a: Any) -> bool:
    """True when a float array has NaN or Inf.  NumPy arrays are scanned in chunks of :data:`_FINITE_CHUNK`
    elements, so the check never allocates a whole-image boolean array (1 byte per element)."""
    if isinstance(a, np.ndarray):
        if a.size <= _FINITE_CHUNK:
            return not bool(np.isfinite(a).all())
        flat = a.reshape(-1)  # a view for the contiguous arrays prepare() returns
        return any(not bool(np.isfinite(flat[i:i + _FINITE_CHUNK]).all())
                   for i in range(0, flat.size, _FINITE_CHUNK))
    torch = torch_module()
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
        return torch_module().cuda.device(where.torch_device)
    return contextlib.nullcontext()


def check_spatial(a: Any, name: str, ndims: Sequence[int] = (2, 3)) -> Tuple[int, ...]:
    shp = tuple(int(s) for s in a.shape)
    if len(shp) not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got an array of shape {shp}")
    return shp


def labels_max(a: Any) -> int:
    """Largest value of an integer array (0 when empty)."""
    return int(a.max()) if _size(a) else 0


def labels_min(a: Any) -> int:
    """Smallest value of an integer array (0 when empty)."""
    return int(a.min()) if _size(a) else 0


def prepare_labels(x: Any, name: str, where: Placement) -> Any:
    """Validate a label image (integer, >= 0, fits int32) and return it as contiguous int32."""
    torch = torch_module()
    if is_torch(x) or hasattr(x, "__cuda_array_interface__"):
        if hasattr(x, "__cuda_array_interface__") and not is_torch(x):
            x = torch.as_tensor(x, device=where.torch_device)
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer label array, got dtype {_np_dtype_name(x.dtype)}")
        raw = x
    else:
        raw = np.asarray(x)
        if raw.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer label array, got dtype {raw.dtype}")
    lo, hi = labels_min(raw), labels_max(raw)
    if lo < 0:
        raise ValueError(f"{name} has negative labels (min {lo}); labels must be >= 0 with 0 = background")
    if hi > np.iinfo(np.int32).max:
        raise ValueError(f"{name} has labels above 2**31 - 1 (max {hi}); relabel them first")
    return prepare(raw, name, np.int32, where, integer=True)


def prepare_mask(mask: Any, where: Placement) -> Tuple[Any, Tuple[int, ...]]:
    """Validate a bool/integer pixel mask (2D or 3D) and return it as contiguous uint8 (0/1) on ``where``, with
    its spatial shape."""
    if mask is None:
        raise ValueError("mask is required")
    if is_torch(mask) or hasattr(mask, "__cuda_array_interface__"):
        m = mask if is_torch(mask) else torch_module().as_tensor(mask, device=where.torch_device)
        if m.dtype.is_floating_point or m.dtype.is_complex:
            raise ValueError(f"mask must be a bool or integer array, got dtype {_np_dtype_name(m.dtype)}")
    else:
        try:
            m = np.asarray(mask)
        except Exception as e:  # noqa: BLE001 - anything NumPy cannot read is a user error here
            raise ValueError(f"mask could not be read as an array: {e}") from None
        if m.dtype.kind not in "biu":
            raise ValueError(f"mask must be a bool or integer array, got dtype {m.dtype}")
    spatial = check_spatial(m, "mask")
    return prepare(m != 0, "mask", np.uint8, where), spatial


def prepare_field(x: Any, name: str, spatial: Tuple[int, ...], where: Placement, *, of: str,
                  plural: bool = False) -> Any:
    """Validate a per-pixel vector field over an image of shape ``spatial`` (flows ``dP``, tracked
    ``positions``): float32, shape ``(ndim, *spatial)``, finite.  ``of`` names the array that fixed ``spatial``
    in the error message (e.g. ``"a mask"``); ``plural`` for names such as "positions"."""
    a = prepare(x, name, np.float32, where)
    want = (len(spatial), *spatial)
    if tuple(int(s) for s in a.shape) != want:
        raise ValueError(f"{name} must have shape {want} for {of} of shape {spatial}, got {tuple(a.shape)}")
    if any_nonfinite(a):
        raise ValueError(f"{name} {'contain' if plural else 'contains'} NaN or Inf")
    return a


def as_number(value: Any, name: str, kind: type = float) -> Any:
    """``kind(value)`` (``int`` or ``float``), or ValueError naming ``name`` when it is not a number."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
