"""Image and mask files: reading with clear errors, atomic writing (temp file + rename).

Temporary files of :func:`atomic_write` are named ``.<name>.fastpose-<random>.tmp`` in the destination's
folder (:func:`is_temp_file` recognises exactly that pattern), so the leftovers of a killed process can be
found and removed (:func:`remove_temp_files`) without touching anybody else's files.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Union

import numpy as np

PathLike = Union[str, os.PathLike]

__all__ = ["TEMP_MARK", "PathLike", "atomic_write", "file_mode", "is_temp_file", "read_image",
           "remove_temp_files", "sample_paths", "write_tiff_atomic"]

log = logging.getLogger("fastpose")

#: the part of a temporary file's name that says fastpose made it: ``.<name>.fastpose-<random>.tmp``
TEMP_MARK = ".fastpose-"
_TEMP_RE = re.compile(r"^\..+\.fastpose-[A-Za-z0-9_]+\.tmp$")


def _reason(e: BaseException) -> str:
    """A reader's exception as a short phrase for "cannot read <path>: <phrase>"."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if "allow_pickle" in msg or "pickle" in msg.lower():
        return ("it holds Python objects, which would need pickle (never used to load images: "
                "a pickled file can run code); save a plain numeric array with np.save")
    if isinstance(e, EOFError) or "failed to read" in msg:
        return f"the file is truncated or corrupt ({msg})"
    return f"{msg} ({type(e).__name__})" if type(e).__name__ not in msg else msg


def read_image(path: PathLike) -> np.ndarray:
    """Read a TIFF (or .npy) image.

    Raises ``FileNotFoundError``/``OSError`` (missing or unreadable file) or ``ValueError`` (corrupt,
    truncated or empty file, a .npy that needs pickle, which is never allowed, a non-numeric dtype, a
    zero-size array), each saying ``cannot read <path>: <reason>``.
    """
    import tifffile

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"cannot read {p}: no such file")
    if not p.is_file():
        raise IsADirectoryError(f"cannot read {p}: not a file")
    try:
        if p.stat().st_size == 0:
            raise ValueError(f"cannot read {p}: the file is empty")
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            a = tifffile.imread(p)
    except ValueError as e:
        if str(e).startswith("cannot read"):
            raise
        raise ValueError(f"cannot read {p}: {_reason(e)}") from None
    except OSError as e:
        raise type(e)(f"cannot read {p}: {_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file for the user
        raise ValueError(f"cannot read {p}: {_reason(e)}") from None
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"cannot read {p}: dtype {a.dtype} is not a numeric image type (bool, integer or float)")
    if a.size == 0:
        raise ValueError(f"cannot read {p}: no image data in the file (shape {a.shape}); "
                         "the file is corrupt or holds no image")
    return a


def file_mode() -> int:
    """Permissions a plainly created file would get (0666 less the umask); temp files start at 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_temp_file(path: PathLike) -> bool:
    """Whether ``path``'s name is one of :func:`atomic_write`'s temporary files (``.<name>.fastpose-*.tmp``)."""
    return bool(_TEMP_RE.match(Path(path).name))


def remove_temp_files(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Remove the temporary files :func:`atomic_write` left in ``folder`` (a killed process's); only that
    name pattern is touched.  Returns the removed paths (each logged); a missing folder has none."""
    d = Path(folder)
    if not d.is_dir():
        return []
    removed: List[Path] = []
    for q in (d.rglob(".*") if recursive else d.glob(".*")):
        if is_temp_file(q) and q.is_file():
            try:
                q.unlink()
            except FileNotFoundError:
                continue
            removed.append(q)
            log.info("removed leftover temporary file %s", q)
    return removed


def atomic_write(path: PathLike, write: Callable[[Any], None], *, text: bool = False,
                 to_path: bool = False) -> Path:
    """Write ``path`` atomically: ``write`` fills a temporary file in the same folder, which is flushed,
    fsynced, given normal permissions and renamed over ``path``.

    ``write`` gets an open file object (binary, or text with ``text=True``), or the temporary file's path
    with ``to_path=True`` (for writers that open files themselves).  On any error (an exception, including
    KeyboardInterrupt) the temporary file is removed and an existing ``path`` is left untouched, so a crash
    or a full disk never leaves a half-written file under the final name; a process killed outright leaves
    at most a ``.<name>.fastpose-*.tmp`` file (see :func:`remove_temp_files`).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}{TEMP_MARK}", suffix=".tmp", dir=p.parent)
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
