"""External encoders (issue 27, item 1): each adapter loads its publisher's layout completely and computes what
the publisher's architecture computes, refuses a file whose keys differ (naming the file and the keys), warns
when randomly initialised, and feeds the project's heads end to end.

Each "published" checkpoint is made at test time, at a small configuration, by building the publisher's
architecture directly with MONAI or transformers (not through the adapter) and writing its tensors under the
publisher's key names, in the publisher's file format. The adapter's tokens are then compared with what the
reference network computes on inputs prepared here independently (slices cut by indexing, ImageNet statistics
written out).
"""
from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fmct_lib.data.preprocess import apply_windows, paper_spec, preprocess
from fmct_lib.models.abmil import ABMILHead
from fmct_lib.models.checkpoints import CheckpointError
from fmct_lib.models.external import ENCODERS, build_encoder
from fmct_lib.models.external.base import axial_slices
from fmct_lib.models.external.resnet3d import resnet_feature_map
from fmct_lib.models.heads import AttentiveHead, Classifier, build_head

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet's RGB statistics


# ------------------------------------------------------------------------------------------ references
def _monai_resnet(layers, stem, stride):
    from monai.networks.nets import ResNet
    return ResNet("bottleneck", list(layers), [64, 128, 256, 512], spatial_dims=3, n_input_channels=3,
                  conv1_t_size=stem, conv1_t_stride=stride, shortcut_type="B", bias_downsample=False,
                  feed_forward=False)


def _radiological(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) RAS → (B, Z, C, Y, X) by indexing: image[r, c] of slice z is voxel (X-1-c, Y-1-r, z)."""
    B, C, X, Y, Z = x.shape
    out = torch.empty(B, Z, C, Y, X)
    for z in range(Z):
        for r in range(Y):
            for c in range(X):
                out[:, z, :, r, c] = x[:, :, X - 1 - c, Y - 1 - r, z]
    return out


def _imagenet(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (..., 3, H, W)."""
    mean, std = (torch.tensor(v, dtype=images.dtype)[:, None, None] for v in (MEAN, STD))
    return (images - mean) / std


@dataclass
class Case:
    """One adapter: a small architecture, how its publisher lays the tensors out, what it computes."""

    name: str
    model_name: str                 # the name its warnings and descriptions use
    options: dict                   # small architecture, passed to the builder (where no folder config fixes it)
    shape: tuple                    # a tiny input batch
    tokens: int                     # expected N of the token set, worked out by hand for ``shape``
    publish: Callable               # (tmp_path) -> (weights path, published state dict, reference network)
    reference: Callable             # (reference network, x) -> tensor the adapter's tokens must reproduce
    compare: Callable               # (adapter tokens) -> the part that must equal ``reference``
    facts: dict                     # published key -> shape (None: must be absent), from the publisher's code
    required: str                   # a published key of the encoder itself
    reported: str                   # that key as a refusal names it (in the adapter's module)
    folder_options: dict = None     # builder options for a model folder (its config.json fixes the architecture)


def _publish_ctfm(tmp_path):
    from monai.networks.nets.segresnet_ds import SegResEncoder
    config = {"spatial_dims": 3, "in_channels": 1, "init_filters": 4, "blocks_down": [1, 1, 1]}
    ref = SegResEncoder(**{**config, "blocks_down": tuple(config["blocks_down"])})
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    folder = tmp_path / "ct_fm_feature_extractor"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder, state, ref


def _publish_merlin(tmp_path):
    ref = _monai_resnet((1, 1, 1, 1), (3, 7, 7), (1, 2, 2))
    state = {f"encode_image.i3_resnet.{k}": v for k, v in ref.state_dict().items()}
    state.update({  # the image encoder's EHR and contrastive heads, the text tower, the CLIP scale
        "encode_image.i3_resnet.classifier.weight": torch.randn(1692, 2048, 1, 1, 1),
        "encode_image.i3_resnet.classifier.bias": torch.randn(1692),
        "encode_image.i3_resnet.contrastive_head.weight": torch.randn(512, 2048, 1, 1, 1),
        "encode_image.i3_resnet.contrastive_head.bias": torch.randn(512),
        "encode_text.linear_layer.weight": torch.randn(512, 768),
        "encode_text.linear_layer.bias": torch.randn(512),
        "encode_text.text_encoder.embeddings.word_embeddings.weight": torch.randn(50, 768),
        "logit_scale": torch.tensor(1.0),
    })
    path = tmp_path / "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
    torch.save(state, path)
    return path, state, ref


def _publish_resnet3d(tmp_path):
    ref = _monai_resnet((1, 1, 1, 1), 7, (1, 2, 2))
    state = dict(ref.state_dict())
    state.update({"fc.weight": torch.randn(700, 2048), "fc.bias": torch.randn(700)})  # Kinetics-700 classifier
    path = tmp_path / "r3d50_K_200ep.pth"
    torch.save({"epoch": 200, "arch": "resnet-50", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, path)
    return path, state, ref


def _publish_dinov3(tmp_path):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    config = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                             num_register_tokens=4, patch_size=8)
    ref = DINOv3ViTModel(config)
    # the hub files keep the blocks at the top level (transformers 5 renames them to model.layer.* on loading)
    state = {k.replace("model.layer.", "layer.", 1): v.contiguous() for k, v in ref.state_dict().items()}
    folder = tmp_path / "dinov3-vitb16-pretrain-lvd1689m"
    folder.mkdir()
    config.to_json_file(str(folder / "config.json"))
    save_file(state, str(folder / "model.safetensors"))
    return folder, state, ref


def _publish_vjepa2(tmp_path):
    from transformers import VJEPA2Config, VJEPA2Model
    config = VJEPA2Config(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, pred_hidden_size=16,
                          pred_num_attention_heads=2, pred_num_hidden_layers=1, patch_size=8, crop_size=16,
                          frames_per_clip=16)
    ref = VJEPA2Model(config)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    folder = tmp_path / "vjepa2-vitl-fpc64-256"
    folder.mkdir()
    config.to_json_file(str(folder / "config.json"))
    save_file(state, str(folder / "model.safetensors"))
    return folder, state, ref


def _ctfm_reference(ref, x):
    # the deepest feature map's voxels in order (their mean is the model card's pooled feature)
    return ref(x)[-1].flatten(2).transpose(1, 2)


def _merlin_reference(ref, x):
    # Merlin's I3ResNet: (B, 1, R, A, S) → (B, 1, S, R, A), its channel repeated three times, then the image embedding
    return ref(torch.cat([x.permute(0, 1, 4, 2, 3)] * 3, dim=1))


def _dinov3_reference(ref, x):
    slices = _radiological(x)
    B, Z = slices.shape[:2]
    return ref(pixel_values=_imagenet(slices.reshape(B * Z, *slices.shape[2:]))).pooler_output.reshape(B, Z, -1)


def _vjepa2_reference(ref, x):
    return ref.get_vision_features(_imagenet(_radiological(x)))


CASES = {
    "ctfm": Case(
        "ctfm", "CT-FM", {"init_filters": 4, "blocks_down": [1, 1, 1]}, (2, 1, 16, 16, 16),
        tokens=1 + 4 ** 3,  # two downsamplings by 2: 16 → 4 per axis
        publish=_publish_ctfm, reference=_ctfm_reference,
        compare=lambda t: t[:, 1:],
        facts={"conv_init.weight": (4, 1, 3, 3, 3), "layers.0.downsample.weight": (8, 4, 3, 3, 3),
               "layers.2.blocks.0.conv2.weight": (16, 16, 3, 3, 3)},
        required="layers.1.blocks.0.conv1.weight", reported="layers.1.blocks.0.conv1.weight", folder_options={}),
    "merlin": Case(
        "merlin", "Merlin", {"layers": (1, 1, 1, 1)}, (2, 1, 32, 32, 32),
        tokens=1 + (32 // 16) * (32 // 32) ** 2,  # slices: stem 1, pool and three stages 2; in-plane 2 more
        publish=_publish_merlin, reference=_merlin_reference,
        compare=lambda t: t[:, 0],
        facts={"encode_image.i3_resnet.conv1.weight": (64, 3, 3, 7, 7), "encode_image.i3_resnet.conv1.bias": None,
               "encode_image.i3_resnet.layer1.0.conv2.weight": (64, 64, 3, 3, 3),
               "encode_image.i3_resnet.layer1.0.downsample.0.weight": (256, 64, 1, 1, 1),
               "encode_image.i3_resnet.layer1.0.downsample.0.bias": None,
               "encode_image.i3_resnet.layer4.0.conv3.weight": (2048, 512, 1, 1, 1)},
        required="encode_image.i3_resnet.layer2.0.conv2.weight", reported="layer2.0.conv2.weight"),
    "resnet3d": Case(
        "resnet3d", "ResNet-50-3D", {"layers": (1, 1, 1, 1)}, (2, 3, 32, 32, 32),
        tokens=1 + (32 // 16) * (32 // 32) ** 2,  # the pool, then 2x1x1: stem (1, 2, 2), max-pool and 3 stages /2
        publish=_publish_resnet3d, reference=lambda ref, x: ref(x), compare=lambda t: t[:, 0],
        facts={"conv1.weight": (64, 3, 7, 7, 7), "layer1.0.downsample.0.weight": (256, 64, 1, 1, 1),
               "layer1.0.downsample.0.bias": None, "fc.weight": (700, 2048)},
        required="layer3.0.conv1.weight", reported="layer3.0.conv1.weight"),
    "dinov3": Case(
        "dinov3", "DINOv3", {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                             "num_hidden_layers": 2, "num_register_tokens": 4, "patch_size": 8},
        (2, 3, 16, 16, 16), tokens=1 + 16,  # the mean, then one token per axial slice
        publish=_publish_dinov3, reference=_dinov3_reference, compare=lambda t: t[:, 1:],
        facts={"embeddings.cls_token": (1, 1, 32), "embeddings.register_tokens": (1, 4, 32),
               "embeddings.patch_embeddings.weight": (32, 3, 8, 8), "layer.1.attention.q_proj.weight": (32, 32),
               "layer.0.layer_scale1.lambda1": (32,), "norm.weight": (32,), "model.layer.0.norm1.weight": None},
        required="layer.0.mlp.up_proj.weight", reported="model.layer.0.mlp.up_proj.weight", folder_options={}),
    "vjepa2": Case(
        "vjepa2", "V-JEPA 2", {"input_size": 16, "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                               "pred_hidden_size": 16, "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1,
                               "patch_size": 8},
        (2, 3, 16, 16, 16), tokens=1 + (16 // 2) * (16 // 8) ** 2,  # tubelets of 2 slices × 8² voxels
        publish=_publish_vjepa2, reference=_vjepa2_reference, compare=lambda t: t[:, 1:],
        facts={"encoder.embeddings.patch_embeddings.proj.weight": (32, 3, 2, 8, 8),
               "encoder.layer.1.attention.query.weight": (32, 32), "encoder.layernorm.weight": (32,),
               "predictor.embeddings.predictor_embeddings.weight": (16, 32)},
        required="encoder.layer.0.mlp.fc1.weight", reported="layer.0.mlp.fc1.weight",
        folder_options={"input_size": 16}),
}


def _load(case: Case, weights, **kwargs):
    folder = (Path(weights) / "config.json").is_file() and case.folder_options is not None
    return build_encoder(case.name, weights, **(case.folder_options if folder else case.options), **kwargs)


def _quiet_build(case: Case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_encoder(case.name, **case.options)


# ---------------------------------------------------------------------------------------------- tests
def test_the_registry_names_every_adapter():
    assert set(ENCODERS) == {"ctfm", "merlin", "dinov3", "vjepa2", "resnet3d"}
    with pytest.raises(ValueError, match="unknown external encoder 'google'"):
        build_encoder("google")


@pytest.mark.parametrize("name", CASES)
def test_published_weights_load_completely_and_compute_as_published(name, tmp_path):
    case = CASES[name]
    torch.manual_seed(1)
    weights, published, ref = case.publish(tmp_path)
    for key, shape in case.facts.items():  # the architecture lays its tensors out as the publisher's does
        assert (tuple(published[key].shape) if key in published else None) == shape, key
    torch.manual_seed(2)  # the adapter starts from other random weights: equal outputs mean everything loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        encoder = _load(case, weights)
    report = encoder.load_report
    assert report.complete and not report.missing and not report.unexpected and not report.misshapen
    assert report.loaded + len(report.dropped) == len(published)  # every published tensor consumed
    assert encoder.description.weights == str(weights) and encoder.description.status == "loaded strictly"
    x = torch.rand(case.shape)
    with torch.no_grad():
        tokens = encoder.eval().forward_features(x)
        expected = case.reference(ref.eval(), x)
    assert tokens.shape == (case.shape[0], case.tokens, encoder.embed_dim)
    torch.testing.assert_close(case.compare(tokens), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(dim=1), rtol=1e-4, atol=1e-5)  # the global feature
    torch.testing.assert_close(encoder(x), tokens[:, 0])


@pytest.mark.parametrize("name", CASES)
def test_a_file_whose_keys_differ_is_refused_naming_file_and_keys(name, tmp_path):
    case = CASES[name]
    weights, published, _ = case.publish(tmp_path)
    broken = {k: v for k, v in published.items() if k != case.required}
    broken["bogus.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as refused:
        _load(case, path)
    message = str(refused.value)
    assert str(path) in message
    assert f"missing ['{case.reported}']" in message and "unexpected ['bogus.weight']" in message
    with pytest.warns(UserWarning, match="loaded partially"):
        partial = _load(case, path, strict=False)
    assert partial.load_report.missing == [case.reported] and partial.load_report.unexpected == ["bogus.weight"]
    assert "partially" in partial.description.status


@pytest.mark.parametrize("name", CASES)
def test_without_weights_it_warns_and_says_randomly_initialised(name):
    case = CASES[name]
    with pytest.warns(UserWarning, match=f"randomly initialised: not {case.model_name}'s weights"):
        encoder = build_encoder(name, **case.options)
    assert encoder.description.weights is None and encoder.load_report is None
    assert f"randomly initialised: not {case.model_name}'s weights" in str(encoder.description)


@pytest.mark.parametrize("head", ["linear", "attentive", "abmil"])
@pytest.mark.parametrize("name", CASES)
def test_tokens_feed_the_heads_and_train_end_to_end(name, head):
    case = CASES[name]
    torch.manual_seed(0)
    encoder = _quiet_build(case)
    head_module = {"linear": lambda: build_head("linear", encoder),
                   "attentive": lambda: AttentiveHead(encoder.embed_dim, encoder.num_heads),
                   "abmil": lambda: ABMILHead(encoder.embed_dim)}[head]()
    model = Classifier(encoder, head_module)
    logits = model(torch.rand(case.shape))
    assert logits.shape == (case.shape[0], 2) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_resnet3d_has_the_stem_of_hara_et_al():
    """3D-ResNets-PyTorch's ``conv1``: kernel (7, 7, 7), stride (1, 2, 2), padding (3, 3, 3), no bias (the first
    axis, their temporal one, at full resolution), then a max-pool of stride 2: layer 4 is 6x3x3 on 96³."""
    encoder = _quiet_build(CASES["resnet3d"])
    x = torch.randn(1, 3, 20, 20, 20)
    w = encoder.net.conv1.weight
    torch.testing.assert_close(encoder.net.conv1(x), F.conv3d(x, w, stride=(1, 2, 2), padding=3))
    with torch.device("meta"):
        grid = resnet_feature_map(_quiet_build(CASES["resnet3d"]).net.to("meta"), torch.empty(1, 3, 96, 96, 96))
    assert tuple(grid.shape[2:]) == (6, 3, 3)


def test_build_head_sizes_itself_from_an_external_encoder():
    encoder = _quiet_build(CASES["resnet3d"])
    assert build_head("attentive", encoder).num_heads == encoder.num_heads
    assert isinstance(build_head("abmil", encoder), ABMILHead) and build_head("abmil", encoder).linear.in_features == encoder.embed_dim


def test_each_adapter_takes_the_channels_of_its_preprocessing():
    for name in CASES:
        encoder = _quiet_build(CASES[name])
        assert encoder.in_chans == len(encoder.preprocess_spec("toy").windows) == CASES[name].shape[1]
    with pytest.raises(ValueError, match=r"CT-FM takes \(B, 1, D, H, W\) inputs \(preprocessing 'ctfm'\)"):
        _quiet_build(CASES["ctfm"]).forward_features(torch.rand(1, 3, 16, 16, 16))


def test_the_preprocessing_of_ctfm_and_merlin_is_their_own():
    ctfm = _quiet_build(CASES["ctfm"]).preprocess_spec("paper")
    assert (ctfm.name, ctfm.orientation, ctfm.spacing, ctfm.foreground_hu) == ("ctfm", "SPL", 1.0, 0.0)
    assert ctfm.canvas is None and ctfm.input_size == paper_spec("paper").input_size
    # CT-FM's ScaleIntensityRange(a_min=-1024, a_max=2048, b_min=0, b_max=1, clip=True)
    hu = torch.tensor([-2000.0, -1024.0, 512.0, 2048.0, 3000.0])[:, None, None]
    np.testing.assert_allclose(apply_windows(hu, ctfm.windows)[0, :, 0, 0].numpy(), [0, 0, 0.5, 1, 1], atol=1e-6)
    merlin = _quiet_build(CASES["merlin"])
    spec = merlin.preprocess_spec("paper")
    assert (spec.name, spec.orientation, spec.spacing, spec.canvas, spec.input_size) == ("merlin", "RAS", 1.5, 224, 224)
    # Merlin's ScaleIntensityRanged(a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True)
    hu = torch.tensor([-1500.0, -1000.0, 0.0, 1000.0])[:, None, None]
    np.testing.assert_allclose(apply_windows(hu, spec.windows)[0, :, 0, 0].numpy(), [0, 0, 0.5, 1], atol=1e-6)
    demo = merlin.preprocess_spec("demo")  # a coarser profile keeps Merlin's 336 mm field of view
    assert abs(demo.spacing * demo.canvas - 336) <= demo.spacing
    assert _quiet_build(CASES["resnet3d"]).preprocess_spec("toy") == paper_spec("toy")


def test_their_own_chains_run_through_the_project_preprocessing_into_the_adapters():
    """A phantom (in air, a head-sized ellipsoid: bone above its equator, 40 HU below) through ``preprocess`` with
    CT-FM's and Merlin's specs: one channel, air at each window's value, and the bright top at the superior end of
    the axis each orientation makes vertical (SPL: the first; RAS: the last), the other axes symmetric."""
    n = 64
    g = (np.arange(n) - n / 2 + 0.5) * 3.0  # 3 mm voxels; with this RAS affine the last array axis runs upwards
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    head = X ** 2 + (1.2 * Y) ** 2 + Z ** 2 < 80 ** 2
    hu = np.where(head, np.where(Z > 0, 2000.0, 40.0), -1000.0).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for name, vertical, air in (("ctfm", 0, 24 / 3072), ("merlin", 2, 0.0)):
        encoder = _quiet_build(CASES[name])
        spec = encoder.preprocess_spec("toy")
        x = preprocess(hu, spec, affine=affine)
        assert x.shape == (1,) + (spec.input_size,) * 3
        assert float(x.min()) == pytest.approx(air, abs=1e-3)
        half = spec.input_size // 2
        for axis in range(3):
            profile = x[0].sum(dim=tuple(a for a in range(3) if a != axis))
            upper_to_lower = float(profile[-half:].sum() / profile[:half].sum())  # ~1 up to a voxel's shift
            assert upper_to_lower > 1.5 if axis == vertical else 0.75 < upper_to_lower < 1.33, (name, axis, profile)
        tokens = encoder.forward_features(x[None])
        assert tokens.shape[0] == 1 and torch.isfinite(tokens).all()


def test_axial_slices_are_read_as_a_radiologist_reads_them():
    x = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)
    torch.testing.assert_close(axial_slices(x), _radiological(x))


def test_a_model_folder_may_hold_its_weights_in_shards_and_be_named_from_home(tmp_path, monkeypatch):
    case = CASES["ctfm"]
    folder, published, _ = case.publish(tmp_path)
    (folder / "model.safetensors").unlink()
    keys = sorted(published)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: published[k] for k in names}, str(folder / shard))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: shard for shard, names in shards.items() for k in names}}))
    assert build_encoder("ctfm", folder).load_report.complete
    monkeypatch.setenv("HOME", str(folder.parent))  # as docs/other_encoders.md writes it: ~/weights/<model folder>
    assert build_encoder("ctfm", f"~/{folder.name}").load_report.complete
    for shard in shards:
        (folder / shard).unlink()
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors .* it holds \['config.json'\]"):
        build_encoder("ctfm", folder)


def test_a_folder_config_that_contradicts_the_arguments_is_refused(tmp_path):
    folder, _, _ = CASES["ctfm"].publish(tmp_path)
    with pytest.raises(CheckpointError, match=r"config.json: \['init_filters'\] differ"):
        build_encoder("ctfm", folder, init_filters=8)


@pytest.mark.parametrize("name", ["dinov3", "vjepa2"])
def test_loading_never_reaches_the_network(name, tmp_path, monkeypatch):
    case = CASES[name]
    weights, _, _ = case.publish(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("an adapter tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert _load(case, weights).load_report.complete
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_vjepa2_refuses_slices_of_another_size():
    encoder = _quiet_build(CASES["vjepa2"])
    with pytest.raises(ValueError, match=r"built for 16² slices"):
        encoder.forward_features(torch.rand(1, 3, 32, 32, 32))
