"""ResNet-50-3D (Hara et al. 2018), the paper's convolutional baseline (Supplementary Fig. 5; Methods "Computing
hardware and software": github.com/kenshohara/3D-ResNets-PyTorch), through MONAI's ``ResNet`` (what
``monai.networks.nets.resnet50`` builds: bottleneck blocks (3, 4, 6, 3), 7³ stem, shortcut B).

It takes the paper's inputs (three windows as channels). The stem is Hara et al.'s: a 7³ convolution of stride
(1, 2, 2), the first axis kept at full resolution (their temporal axis), then a max-pool of stride 2; so the
layer-4 feature map (2048 channels) is 1/16 of the input along the first axis and 1/32 along the other two
(3×96³ → 6×3×3). It is the token set; its global average (the network's own ``avgpool``) is the first token. ``layers``
and ``widths`` (the stages' bottleneck widths, published 64, 128, 256, 512) shrink it for the small profiles.

The published weights the paper's source provides are Hara et al.'s Kinetics checkpoints (``r3d50_K_200ep.pth``
and kin, MIT licence, Google Drive links in their README): ``torch.save`` of a dict whose ``state_dict`` has
the keys of this very module (``conv1.weight``, ``layer1.0.conv1.weight``, …, ``layer1.0.downsample.0.weight``,
no bias on the shortcut convolution) plus the action classifier ``fc.*``, which is dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import ExternalEncoder, feature_map_tokens, heads_for, model_files

__all__ = ["ResNet3dEncoder", "build_resnet3d", "resnet_feature_map", "RESNET50_LAYERS", "RESNET_WIDTHS"]

RESNET50_LAYERS = (3, 4, 6, 3)
RESNET_WIDTHS = (64, 128, 256, 512)   # the stages' bottleneck widths (×4 out)


def resnet_feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MONAI ``ResNet`` up to its last stage: (B, C, D, H, W) → (B, 2048, D', H', W'), before pooling."""
    x = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        x = net.maxpool(x)
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class ResNet3dEncoder(ExternalEncoder):
    name = "ResNet-50-3D"
    revision = 1  # 1: Hara's stem stride (1, 2, 2); 0 had MONAI's (1, 1, 1), 4x the tokens and FLOPs
    published = ("Hara et al. 3D-ResNets-PyTorch Kinetics checkpoints (r3d50_K_200ep.pth, r3d50_KM_200ep.pth), "
                 "MIT")

    def __init__(self, layers=RESNET50_LAYERS, widths=RESNET_WIDTHS, in_chans: int = 3):
        from monai.networks.nets import ResNet
        dim = 4 * widths[-1]  # the bottleneck's expansion
        super().__init__(embed_dim=dim, num_heads=heads_for(dim), in_chans=in_chans)
        self.architecture = (f"MONAI ResNet, bottleneck blocks {tuple(layers)}, widths {tuple(widths)}, 7x7x7 stem "
                             "of stride (1, 2, 2), shortcut B")
        self.net = ResNet("bottleneck", list(layers), list(widths), spatial_dims=3, n_input_channels=in_chans,
                          conv1_t_size=7, conv1_t_stride=(1, 2, 2), shortcut_type="B", bias_downsample=False,
                          feed_forward=False)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map_tokens(resnet_feature_map(self.net, x))


def build_resnet3d(weights=None, *, strict: bool = True, layers=RESNET50_LAYERS,
                   widths=RESNET_WIDTHS) -> ResNet3dEncoder:
    """ResNet-50-3D from a local checkpoint (a state dict, or Hara et al.'s training checkpoint holding one under
    ``state_dict``), or randomly initialised (the paper trains it from scratch). ``layers`` changes the depth,
    ``widths`` the stages' widths."""
    model = ResNet3dEncoder(layers, widths)
    state = {}
    if weights is not None:
        state, _ = model_files(weights)
        state = state["state_dict"] if isinstance(state.get("state_dict"), dict) else state
    return model.attach(model.net, weights, state, strict=strict, drop=r"fc\.")
