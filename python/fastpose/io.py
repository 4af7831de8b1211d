"""Image and mask files: reading with clear errors, atomic writing (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]


def read_image(path: PathLike) -> np.ndarray:
    """Read a TIFF (or .npy) image; raises ValueError naming the file when it is unreadable."""
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        return tifffile.imread(p)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file for the user
        raise ValueError(f"{p}: cannot read image ({type(e).__name__}: {e})") from None


def file_mode() -> int:
    """Permissions a plainly created file would get (0666 less the umask); temp files start at 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_tiff_atomic(path: PathLike, data: np.ndarray, compression: str = "zlib") -> Path:
    """Write ``data`` to ``path`` as TIFF via a temporary file in the same folder, then rename.

    A crash or a full disk never leaves a half-written file under the final name.
    """
    import tifffile

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.close(fd)
        with open(tmp, "wb") as f:
            tifffile.imwrite(f, data, compression=compression)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def sample_paths() -> tuple[Path, Path]:
    """(image, masks) paths of the bundled DSB 2018 sample."""
    d = Path(__file__).resolve().parent / "data"
    return d / "dsb2018_0402a81e75262469_img.tif", d / "dsb2018_0402a81e75262469_masks.tif"
