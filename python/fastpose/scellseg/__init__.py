"""Scellseg (Yu et al., 2023): a style-aware Cellpose network (sCSnet: attention-gated skips, dense units,
hierarchical styles) and contrastive fine-tuning for few-shot adaptation; see :mod:`.network`."""

from .finetune import FinetuneResult, contrastive_loss, default_contrast, finetune, load_styles, network_input
from .network import SCSNet, from_cellpose_state_dict, infer_arch, is_scellseg_state_dict

__all__ = ["SCSNet", "from_cellpose_state_dict", "infer_arch", "is_scellseg_state_dict", "finetune",
           "FinetuneResult", "contrastive_loss", "default_contrast", "load_styles", "network_input"]
