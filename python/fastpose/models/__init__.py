"""Neural networks and model files for fastpose (pure PyTorch; does not need ``fastpose._core``).

* :class:`UNet` -- the Cellpose 2/3 residual U-Net, state-dict compatible with Cellpose's ``CPnet``.
* :class:`ViT` -- the Cellpose-SAM style ViT (``ViT.from_preset("vit_l" | "vit_s" | "vit_t")``).
* :func:`save_model` / :func:`load_model` -- fastpose model files; ``load_model`` also reads Cellpose
  2/3 and Cellpose-SAM checkpoints.
* :class:`ModelSpec` / :func:`spec_of` -- what the generic data path needs to run a network (stored in its file).
"""

from __future__ import annotations

from .files import (ARCHITECTURES, BUILTIN_MODELS, FORMAT, FORMAT_VERSION, Architecture, build_model, load_model,
                    model_from_state_dict, register_architecture, resolve_model_path, save_model, spec_of)
from .heads import add_class_heads
from .spec import DEFAULT_NORMALIZE, ModelSpec, class_names, panoptic_spec
from .unet import DEFAULT_NBASE, UNet, style_vector
from .vit import VIT_PRESETS, ViT, to_three_channels

__all__ = [
    "UNet", "DEFAULT_NBASE", "style_vector",
    "ViT", "VIT_PRESETS", "to_three_channels",
    "BUILTIN_MODELS", "DEFAULT_NORMALIZE", "FORMAT", "FORMAT_VERSION",
    "build_model", "load_model", "save_model", "model_from_state_dict", "resolve_model_path",
    "ModelSpec", "spec_of", "add_class_heads", "class_names", "panoptic_spec", "ARCHITECTURES", "Architecture", "register_architecture",
]
