"""Command-line inputs, shared by the subcommands that read images and write outputs to ``--out``: which files
(files, folders, glob patterns), the folder under ``--out`` each one's outputs go to, output-name clashes, and a
writable ``--out`` -- checked before any work."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .outputs import OUTPUT_FILES, RECORD_SUFFIX

__all__ = ["UsageError", "InputFile", "IMAGE_SUFFIXES", "OUTPUT_MARKERS", "collect_inputs", "find_inputs",
           "check_unique_outputs", "check_out_folder"]

log = logging.getLogger("fastpose")


class UsageError(ValueError):
    """A bad command line or setup (exit status 2): the message is one sentence for the user."""



# ------------------------------------------------------------------------------------------------
# inputs: which files, and where each one's outputs go
# ------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy")
OUTPUT_MARKERS = ("_masks", "_flows", "_seg", "_outlines", "_cp_masks", "_restored")
#: ends of file names that fastpose (or Cellpose) writes: never taken as inputs from a folder or glob
_OUTPUT_ENDS = tuple(OUTPUT_FILES.values()) + (RECORD_SUFFIX, "_cp_outlines.txt")


@dataclass(frozen=True)
class InputFile:
    """One input image and the folder, relative to --out, that its outputs go to."""

    path: Path
    rel: Path = Path(".")

    @property
    def stem(self) -> str:
        """The outputs' name stem: the file name less its suffix and a trailing ``_img``."""
        return _stem(self.path)


def _stem(p: Path) -> str:
    s = p.name
    for suf in (".tiff", ".tif", ".npy"):
        if s.lower().endswith(suf):
            s = s[: -len(suf)]
            break
    return s.removesuffix("_img")


def _looks_like_output(q: Path) -> bool:
    from .io import is_temp_file

    name = q.name.lower()
    if q.suffix.lower() in IMAGE_SUFFIXES and any(q.stem.endswith(m) for m in OUTPUT_MARKERS):
        return True
    return name.endswith(_OUTPUT_ENDS) or is_temp_file(q)


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern is rooted at: its leading parts without wildcards."""
    import glob

    parts = Path(pattern).parts
    root: List[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def _within(q: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        q.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _names(paths: Sequence[Path], n: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def collect_inputs(inputs: Sequence[str], recursive: bool, out: Optional[Path] = None) -> List[InputFile]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of :class:`InputFile`.

    Each file's outputs go to the path of its folder relative to the folder (or the glob's leading folder)
    it was found under, inside --out; a file named explicitly has its outputs in --out itself.  From a
    folder or glob, files that are not images (suffix other than .tif/.tiff/.npy) and files that look like
    outputs (``*_masks.tif``, ``*_seg.npy``, ``*.fastpose.json``..., or anything inside ``out``) are skipped,
    each group reported in one log line; a file named explicitly is always taken.
    """
    import glob

    out_r = out.resolve() if out is not None and out.exists() else None
    found: List[InputFile] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found.append(InputFile(p))
            continue
        if p.is_dir():
            root = p
            cands = sorted(q for q in (p.rglob("*") if recursive else p.glob("*")) if q.is_file())
        else:
            root = _glob_root(item)
            cands = sorted(Path(q) for q in glob.glob(item, recursive=recursive) if Path(q).is_file())
            if not cands:
                raise FileNotFoundError(f"{item}: no such file, folder or matching files")
        not_images: List[Path] = []
        outputs: List[Path] = []
        for q in cands:
            if _looks_like_output(q) or _within(q, out_r):
                outputs.append(q)
            elif q.suffix.lower() not in IMAGE_SUFFIXES:
                not_images.append(q)
            else:
                rel = Path(os.path.relpath(q.parent.resolve(), root.resolve()))
                found.append(InputFile(q, Path(".") if rel.parts[:1] == ("..",) else rel))
        if not_images:
            log.info("%s: skipped %d file(s) that are not images (%s): %s", item, len(not_images),
                     "/".join(IMAGE_SUFFIXES), _names(not_images))
        if outputs:
            log.info("%s: skipped %d file(s) that look like segmentation outputs: %s", item, len(outputs),
                     _names(outputs))
    seen, result = set(), []
    for f in sorted(found, key=lambda f: str(f.path)):
        r = f.path.resolve()
        if r not in seen:
            seen.add(r)
            result.append(f)
    return result


def find_inputs(inputs: List[str], recursive: bool) -> List[Path]:
    """The image files of :func:`collect_inputs` (files, folders, glob patterns), sorted and de-duplicated."""
    return [f.path for f in collect_inputs(inputs, recursive)]


def check_unique_outputs(files: Sequence[InputFile], out: Path = Path("OUT")) -> None:
    """Raise :class:`UsageError` naming the inputs that would write the same output names (same folder under
    --out and same stem, compared without case so outputs survive a copy to a case-insensitive disk)."""
    by_key: Dict[str, List[InputFile]] = {}
    for f in files:
        by_key.setdefault(str(f.rel / f.stem).casefold(), []).append(f)
    clashes = [g for g in by_key.values() if len(g) > 1]
    if not clashes:
        return
    lines = []
    for g in clashes[:5]:
        dest = g[0].rel / f"{g[0].stem}_*"
        lines.append(f"{' and '.join(str(f.path) for f in g)} would write the same outputs {out / dest}")
    more = f" (and {len(clashes) - 5} more clashes)" if len(clashes) > 5 else ""
    raise UsageError(f"{len(clashes)} output name clash(es), nothing segmented: {'; '.join(lines)}{more}. "
                     "Outputs are named <stem>_<kind> (stem: the file name less its suffix and a trailing "
                     "_img) in the input's folder relative to the folder given; rename or move one of each "
                     "pair, segment them into separate --out folders, or give their common parent folder "
                     "with --recursive so that the outputs mirror the subfolders")


# ------------------------------------------------------------------------------------------------
# the output folder: checked before the first image, leftovers of a killed run removed
# ------------------------------------------------------------------------------------------------

def check_out_folder(out: Path, subfolders: Sequence[Path] = ()) -> None:
    """Create ``out`` (and its ``subfolders``) and prove each is writable by writing and deleting a probe
    file; raise :class:`UsageError` with one sentence when that fails (a file where the folder should be, a
    read-only folder, a full disk)."""
    from .io import TEMP_MARK

    for d in [out, *(out / s for s in subfolders if s != Path("."))]:
        blocker = next((a for a in [d, *d.parents] if a.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UsageError(f"--out {out}: {blocker} is a file, not a folder; give a folder path "
                             "(it is created if missing)")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the folder {d} ({e.strerror or e})") from None
        try:
            fd, probe = tempfile.mkstemp(prefix=f".probe{TEMP_MARK}", suffix=".tmp", dir=d)
            try:
                os.write(fd, b"fastpose write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write in {d} ({e.strerror or e}); choose a folder you "
                             "can write to") from None


