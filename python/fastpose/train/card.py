"""Model cards: the JSON file beside a model file (and a copy inside it), every field written by code.

A card holds what the weights are (``model``, ``diam_mean``, ``diam_labels``, ``nbase``), the data and
split (``data``), the one command that trains them (``reproduce``) with the resolved ``recipe`` options,
the ``training`` record and the held-out ``validation`` (:func:`fastpose.train.evaluate.evaluate_heldout`).

``fastpose train --card`` (on for ``--recipe``) writes a card after training; ``fastpose evaluate-card``
recomputes the validation of an existing model file and copies its ``training`` record from the file's
stored metadata (``extra["training"]`` from ``fastpose train``; older files: ``extra["card"]``), saying
where it came from.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..io import PathLike, atomic_write

__all__ = ["CARD_VERSION", "training_record", "recipe_text", "build_card", "write_card", "read_card", "check_card",
           "merge_validation", "command_line"]

CARD_VERSION = 1


def training_record(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The training record stored in a model file's metadata (empty when there is none).

    Files from ``fastpose train`` carry ``extra["training"]`` (with ``trainer``); older files written with
    an embedded card carry ``extra["card"]``, whose ``training``, ``device`` and ``recipe`` text are taken
    (its ``validation`` is not: the evaluator recomputes that).
    """
    extra = dict(meta.get("extra") or {})
    if isinstance(extra.get("training"), Mapping):
        return dict(extra["training"])
    old = extra.get("card")
    if isinstance(old, Mapping):
        rec = dict(old.get("training") or {})
        for k in ("device", "recipe"):
            if old.get(k) is not None:
                rec.setdefault(k, old[k])
        return rec
    return {}


def recipe_text(info: Mapping[str, Any]) -> str:
    """One line describing a run from :attr:`TrainResult.info` (optimiser, schedule, precision, crops)."""
    opt = str(info.get("optimizer", "?"))
    parts = [f"{opt.upper() if opt == 'sgd' else 'AdamW'} lr {info.get('lr'):g}"
             + (f" momentum {info['momentum']:g}" if info.get("momentum") else "")
             + f" wd {info.get('weight_decay'):g}"]
    if info.get("time_budget"):
        parts.append(f"{info['time_budget']:g} s wall-clock budget, {info.get('schedule')}")
    else:
        parts.append(f"{info.get('epochs')} epochs, {info.get('schedule')}")
    parts.append(f"{info['amp']} autocast" if info.get("amp") else "fp32")
    if info.get("channels_last"):
        parts.append("channels-last")
    if info.get("compile"):
        parts.append(f"torch.compile ({info['compile']})")
    if info.get("workers"):
        parts.append(f"augmentation on {info['workers']} {info.get('worker_type')} workers")
    parts.append(f"{info.get('tile')} crops, batch {info.get('batch_size')}, Cellpose augmentations"
                 + (" + Cellpose-SAM" if info.get("sam_augment") else ""))
    return ", ".join(parts)


def build_card(*, name: str, meta: Mapping[str, Any], data: str, reproduce: str, recipe: Mapping[str, Any],
               training: Mapping[str, Any], validation: Mapping[str, Any], written_by: str,
               kinds: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Assemble a card (plain JSON types) from a model's metadata and the pieces above."""
    arch = dict(meta.get("arch") or {})
    card: Dict[str, Any] = {
        "card_version": CARD_VERSION,
        "model": name,
        "data": data,
        "diam_mean": float(meta["diam_mean"]),
        "diam_labels": float(meta["diam_labels"]),
        "nbase": list(arch.get("nbase") or []) or None,
        "reproduce": reproduce,
        "recipe": dict(recipe),
        "training": dict(training),
        "validation": dict(validation),
        "written_by": written_by,
    }
    if kinds:
        card["kinds"] = dict(kinds)
    return _finite(card)


def _finite(obj: Any) -> Any:
    """NaN/Inf -> None, so the card is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_card(path: PathLike, card: Mapping[str, Any]) -> None:
    """Write ``card`` as indented JSON, atomically (:func:`fastpose.io.atomic_write`)."""
    text = json.dumps(card, indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text), text=True)


def read_card(path: PathLike) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_card(path: PathLike) -> Dict[str, Any]:
    """The model card at ``path`` (a JSON object, its ``validation`` an object when present); ValueError or
    OSError otherwise -- what a benchmark checks before it runs, so a bad ``--card`` fails at once."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--card {p}: no such file (the card to merge the results into must exist)")
    try:
        card = read_card(p)
    except json.JSONDecodeError as e:
        raise ValueError(f"--card {p}: not JSON ({e})") from None
    if not isinstance(card, dict) or not isinstance(card.get("validation", {}), dict):
        raise ValueError(f"--card {p}: not a model card (a JSON object whose 'validation' is an object)")
    return card


def merge_validation(path: PathLike, key: str, entry: Mapping[str, Any]) -> None:
    """Put ``entry`` under ``card["validation"][key]`` of the card at ``path`` (:func:`check_card`; the other
    validation entries are kept), written atomically."""
    card = check_card(path)
    val = dict(card.get("validation") or {})
    val[key] = dict(entry)
    card["validation"] = val
    write_card(path, card)

def command_line(prog: str, given: Dict[str, Any], positional: Tuple[str, ...] = ()) -> str:
    """The command line of the options in ``given`` (the parsed namespace before recipe defaults were
    filled in) that differ from their parser defaults: ``--recipe`` first, then parser order."""
    table = given.get("_flags") or []
    parts = [prog, *map(shlex.quote, positional)]
    rest = []
    for dest, flag, default, boolopt in table:
        v = given.get(dest)
        if v is None or v == default:
            continue
        if boolopt:
            tok = [flag if v else "--no-" + flag[2:]]
        elif v is True:
            tok = [flag]
        elif isinstance(v, (list, tuple)):
            tok = [flag, *map(lambda x: shlex.quote(str(x)), v)]
        else:
            tok = [flag, shlex.quote(f"{v:g}" if isinstance(v, float) else str(v))]
        (parts if dest == "recipe" else rest).extend(tok)
    return " ".join(parts + rest)
