"""Merlin (Blankemeier et al. 2024): a 3-D abdominal-CT vision-language model whose image encoder is an
I3D-inflated ResNet-152, one of the paper's baselines (Methods "Baseline comparisons"; Fig. 1f, Extended Data
Fig. 3, Supplementary Fig. 4).

Built here with MONAI's ``ResNet``, not the ``merlin-vlm`` package: that package requires transformers, peft,
accelerate, nltk, sentencepiece and more for the text tower, and building its model downloads weights at run
time (torchvision's ImageNet ResNet-152, a Clinical-Longformer, the checkpoint), which this project never does.
The inflated network is, layer for layer and key for key, a MONAI ``ResNet`` with bottleneck blocks
(3, 8, 36, 3), a 3×7×7 stem of stride (1, 2, 2), a 3×3×3 max-pool of stride 2, 3×3×3 middle convolutions,
1×1×1 shortcut convolutions without bias, and three input channels (Merlin repeats its one channel three
times). The slice axis (S) is its first spatial axis.

The published checkpoint (Hugging Face ``stanfordmimi/Merlin``,
``i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt``) is a ``torch.save`` state dict of
the whole model: the image encoder under ``encode_image.i3_resnet.`` (``conv1.weight`` (64, 3, 3, 7, 7),
``layer1.0.conv2.weight`` (64, 64, 3, 3, 3), ``layer1.0.downsample.0.weight``, …), its phenotype and contrastive
heads (``classifier``, ``contrastive_head``), the text tower ``encode_text.*`` and ``logit_scale``. The trunk
loads; the heads and the text tower are dropped and listed. The layer-4 feature map (2048 channels) is the
token set; its average is the first token, Merlin's image embedding.

Merlin's chain (``merlin/data/monai_transforms.py``): RAS, 1.5 × 1.5 × 3 mm, HU [−1000, 1000] → [0, 1], pad and
centre-crop to 224 × 224 × 160. The ``merlin`` preset of ``data.preprocess`` (``merlin_spec``) is that chain as
near as a ``PreprocessSpec`` allows: isotropic 1.5 mm voxels and a 224³ canvas (336 mm), at the paper profile;
coarser profiles keep the field of view. ``widths`` (the stages' bottleneck widths, published 64, 128, 256, 512)
and ``layers`` shrink the network for a randomly initialised stand-in at the small profiles.
"""
from __future__ import annotations

import torch

from .base import ExternalEncoder, feature_map_tokens, heads_for, model_files
from .resnet3d import RESNET_WIDTHS, resnet_feature_map

__all__ = ["MerlinEncoder", "build_merlin", "RESNET152_LAYERS"]

RESNET152_LAYERS = (3, 8, 36, 3)
_PREFIX = "encode_image.i3_resnet."
_OTHERS = r"(encode_text\.|logit_scale$|classifier\.|contrastive_head\.)"  # text tower, CLIP scale, image heads


class MerlinEncoder(ExternalEncoder):
    name = "Merlin"
    published = ("Hugging Face stanfordmimi/Merlin (i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36"
                 "_epoch_99.pt); see its model card for the licence")
    preset = "merlin"

    def __init__(self, layers=RESNET152_LAYERS, widths=RESNET_WIDTHS):
        from monai.networks.nets import ResNet
        dim = 4 * widths[-1]  # the bottleneck's expansion
        super().__init__(embed_dim=dim, num_heads=heads_for(dim), in_chans=1)
        self.architecture = (f"I3D-inflated ResNet, bottleneck blocks {tuple(layers)}, widths {tuple(widths)} "
                             "(MONAI ResNet)")
        self.i3_resnet = ResNet("bottleneck", list(layers), list(widths), spatial_dims=3, n_input_channels=3,
                                conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2), shortcut_type="B",
                                bias_downsample=False, feed_forward=False)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        # RAS (B, 1, R, A, S) → (B, 3, S, R, A): the slices first, the one channel seen three times, as Merlin
        x = x.permute(0, 1, 4, 2, 3).expand(-1, 3, -1, -1, -1)
        return feature_map_tokens(resnet_feature_map(self.i3_resnet, x))


def build_merlin(weights=None, *, strict: bool = True, layers=RESNET152_LAYERS, widths=RESNET_WIDTHS) -> MerlinEncoder:
    """Merlin's image encoder from a local checkpoint (the whole model's state dict, or the image encoder's
    alone), or randomly initialised. ``layers`` changes the depth, ``widths`` the stages' widths."""
    model = MerlinEncoder(layers, widths)
    state = {}
    if weights is not None:
        state, _ = model_files(weights)
        state = {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in state.items()}
    return model.attach(model.i3_resnet, weights, state, strict=strict, drop=_OTHERS)
