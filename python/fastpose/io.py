"""Image and mask files: reading with clear errors, atomic writing (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

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


def atomic_write(path: PathLike, write: Callable[[Any], None], *, text: bool = False,
                 to_path: bool = False) -> Path:
    """Write ``path`` atomically: ``write`` fills a temporary file in the same folder, which is flushed,
    fsynced, given normal permissions and renamed over ``path``.

    ``write`` gets an open file object (binary, or text with ``text=True``), or the temporary file's path
    with ``to_path=True`` (for writers that open files themselves).  On any error the temporary file is
    removed and an existing ``path`` is left untouched, so a crash or a full disk never leaves a
    half-written file under the final name.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        if to_path:
            write(Path(tmp))
        else:
            with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
                write(f)
        with open(tmp, "rb+") as f:
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


def write_tiff_atomic(path: PathLike, data: np.ndarray, compression: str = "zlib") -> Path:
    """Write ``data`` to ``path`` as a (zlib-compressed) TIFF, atomically (see :func:`atomic_write`)."""
    import tifffile

    return atomic_write(path, lambda f: tifffile.imwrite(f, data, compression=compression))


def sample_paths() -> tuple[Path, Path]:
    """(image, masks) paths of the bundled DSB 2018 sample."""
    d = Path(__file__).resolve().parent / "data"
    return d / "dsb2018_0402a81e75262469_img.tif", d / "dsb2018_0402a81e75262469_masks.tif"
