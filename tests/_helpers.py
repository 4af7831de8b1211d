"""Helpers shared by the test modules (not fixtures: those live in conftest.py).

Test modules import from here, never from each other or from conftest:

* label and score helpers: :func:`cellprob_from_labels`, :func:`ap_at` (``fastpose.metrics``);
* devices: :data:`REQUIRE_CUDA`, :func:`cuda_ok`;
* reference packages for the compatibility tests (``tests/test_compat_cellpose.py``, ``tests/test_models.py``):
  :data:`REQUIRE_COMPAT`, :func:`cellpose4_vit` (Cellpose 4 in this environment) and
  :func:`cellpose3_python` / :func:`run_cellpose3` (Cellpose 3 in its own environment, driven by subprocess).
  ``scripts/test.sh`` installs both and sets ``FASTPOSE_REQUIRE_COMPAT=1``, so there a missing reference
  package fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import pytest

import fastpose.core as fc
from fastpose.metrics import average_precision

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# --------------------------------------------------------------------------------------------------
# labels and scores
# --------------------------------------------------------------------------------------------------


def cellprob_from_labels(labels: np.ndarray) -> np.ndarray:
    """Logit-like cell probability: +5 inside masks, -5 outside."""
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


def ap_at(true: np.ndarray, pred: np.ndarray, threshold: float) -> float:
    """AP = TP / (TP + FP + FN) of one image at one IoU threshold (``fastpose.metrics.average_precision``)."""
    return float(average_precision(true, pred, [threshold])[0][0, 0])


# --------------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------------

REQUIRE_CUDA = os.environ.get("FASTPOSE_REQUIRE_CUDA", "") == "1"


def cuda_ok() -> bool:
    """A usable CUDA GPU and a CUDA build of fastpose."""
    return fc.cuda_available()


# --------------------------------------------------------------------------------------------------
# reference packages (compatibility tests)
# --------------------------------------------------------------------------------------------------

REQUIRE_COMPAT = os.environ.get("FASTPOSE_REQUIRE_COMPAT", "") == "1"
CELLPOSE3_VENV = Path(os.environ.get("FASTPOSE_CELLPOSE3_VENV", REPO / "build-cp3"))
CELLPOSE3_SCRIPTS = HERE / "compat"


def missing_reference(what: str) -> None:
    """Skip (fail under ``FASTPOSE_REQUIRE_COMPAT=1``, as in ``scripts/test.sh``) for a missing reference."""
    msg = f"{what} (scripts/test.sh installs it)"
    if REQUIRE_COMPAT:
        pytest.fail(f"FASTPOSE_REQUIRE_COMPAT=1 but {msg}", pytrace=False)
    pytest.skip(msg)


def cellpose4_vit() -> types.ModuleType:
    """``cellpose.vit`` of Cellpose >= 4 (CPSAM), importable without torchvision.

    ``cellpose.vit`` needs only ``segment_anything.sam_model_registry``, but ``segment_anything/__init__.py``
    also imports its predictor and mask generator, which import torchvision; PyPI's torchvision cannot be
    installed beside the CPU torch this suite runs with.  When the package's ``__init__`` fails, the package
    is set up without it and only ``segment_anything.build_sam`` (the real SAM modules) is loaded.
    """
    try:
        import cellpose
    except ImportError:
        missing_reference("cellpose 4.x is not installed")
    if not hasattr(cellpose, "version") or int(str(cellpose.version).split(".")[0]) < 4:
        missing_reference(f"cellpose {getattr(cellpose, 'version', '?')} is not 4.x")
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            missing_reference("segment_anything is not installed")
        try:
            importlib.import_module("segment_anything")
        except ImportError:  # torchvision missing or broken: the predictor / mask generator are not needed
            for name in [m for m in sys.modules if m == "segment_anything" or m.startswith("segment_anything.")]:
                del sys.modules[name]
            pkg = types.ModuleType("segment_anything")
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__spec__ = spec
            pkg.__file__ = spec.origin
            sys.modules["segment_anything"] = pkg
            pkg.sam_model_registry = importlib.import_module("segment_anything.build_sam").sam_model_registry
    return importlib.import_module("cellpose.vit")


def cellpose3_python() -> Path:
    """The Python of the Cellpose 3 environment (``build-cp3``, made by ``scripts/test.sh``)."""
    py = CELLPOSE3_VENV / "bin" / "python"
    if not py.is_file():
        missing_reference(f"no Cellpose 3 environment at {CELLPOSE3_VENV}")
    return py


def run_cellpose3(script: str, args: Sequence[Any], timeout: float = 600) -> Dict[str, Any]:
    """Run ``tests/compat/<script>`` with Cellpose 3's Python; it prints one JSON object as its last line."""
    py = cellpose3_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), CELLPOSE_LOCAL_MODELS_PATH=str(CELLPOSE3_VENV / "models"))
    r = subprocess.run([str(py), str(CELLPOSE3_SCRIPTS / script), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(CELLPOSE3_SCRIPTS))
    if r.returncode != 0:
        raise AssertionError(f"{script} failed with exit code {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}
