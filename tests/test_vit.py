"""The 3-D ViT encoder, checked against independent computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from fmct_lib.config import ModelConfig, get_profile
from fmct_lib.models.vit3d import Attention, VisionTransformer3d, sincos_pos_embed_3d, vit_from_config

torch.manual_seed(0)


def small_vit(**kw):
    cfg = dict(img_size=24, patch_size=6, embed_dim=48, depth=2, num_heads=4)
    cfg.update(kw)
    return VisionTransformer3d(**cfg).eval()


def test_sincos_table_matches_direct_formula():
    grid, dim = (3, 4, 5), 24
    table = sincos_pos_embed_3d(grid, dim)
    pd = dim // 6
    assert table.shape == (60, dim)
    row = 0
    for i in range(grid[0]):
        for j in range(grid[1]):
            for k in range(grid[2]):  # last axis fastest, as the conv flatten order
                expect = []
                for pos in (j, i, k):  # the authors' channel order: middle axis first
                    expect += [math.sin(pos / 10000 ** (m / pd)) for m in range(pd)]
                    expect += [math.cos(pos / 10000 ** (m / pd)) for m in range(pd)]
                torch.testing.assert_close(table[row], torch.tensor(expect), atol=1e-6, rtol=0)
                row += 1


def test_sincos_requires_dim_divisible_by_six():
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_pos_embed_3d((2, 2, 2), 50)


def test_attention_equals_explicit_softmax_loop():
    attn = Attention(dim=12, num_heads=3, qkv_bias=True).eval()
    x = torch.randn(2, 5, 12)
    out = attn(x)
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv[..., :12], qkv[..., 12:24], qkv[..., 24:]
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        rows = []
        for b in range(2):
            scores = torch.zeros(5, 5)
            for t in range(5):
                for s in range(5):
                    scores[t, s] = (q[b, t, sl] * k[b, s, sl]).sum() / math.sqrt(4)
            rows.append(torch.softmax(scores, dim=-1) @ v[b, :, sl])
        heads.append(torch.stack(rows))
    expect = torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_shapes_tokens_and_cls():
    enc = small_vit(num_register_tokens=2)
    x = torch.randn(2, 3, 24, 24, 24)
    tokens = enc.forward_features(x)
    assert tokens.shape == (2, 1 + 2 + 64, 48)
    assert enc.num_prefix_tokens == 3
    torch.testing.assert_close(enc(x), tokens[:, 0])
    # final norm applied: each token standardised, (t - mean) / sqrt(var + eps), the affine the identity here
    seen = []
    hook = enc.norm.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    enc.forward_features(x)
    hook.remove()
    before = seen[0]
    var = before.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(tokens, (before - before.mean(-1, keepdim=True)) / torch.sqrt(var + enc.norm.eps),
                               atol=1e-5, rtol=1e-5)


def test_get_attention_is_probabilities_and_matches_fused_path():
    enc = small_vit()
    x = torch.randn(1, 3, 24, 24, 24)
    fused = enc.forward_features(x)
    attns = enc.get_attention(x)
    assert len(attns) == 2 and attns[0].shape == (1, 4, 65, 65)
    for a in attns:
        torch.testing.assert_close(a.sum(-1), torch.ones(1, 4, 65), atol=1e-5, rtol=0)
    # the switch is per call: the default path is restored, and explicit attention gives the same output
    assert all(not b.attn.keep_attn and b.attn.attn_probs is None for b in enc.blocks)
    for b in enc.blocks:
        b.attn.keep_attn = True
    explicit = enc.forward_features(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_intermediate_layers_last_equals_forward_features():
    enc = small_vit()
    x = torch.randn(1, 3, 24, 24, 24)
    layers = enc.get_intermediate_layers(x, n=2)
    assert len(layers) == 2
    torch.testing.assert_close(layers[-1], enc.forward_features(x))


def test_patch_order_last_axis_fastest():
    """Token n corresponds to grid index (n // (g1*g2), (n // g2) % g1, n % g2)."""
    enc = small_vit(depth=0)
    with torch.no_grad():
        enc.pos_embed.zero_()
        w = torch.zeros_like(enc.patch_embed.proj.weight)
        w[0, 0] = 1.0  # channel 0 sums the patch of input channel 0
        enc.patch_embed.proj.weight.copy_(w)
        enc.patch_embed.proj.bias.zero_()
    x = torch.zeros(1, 3, 24, 24, 24)
    x[0, 0, 6:12, 18:24, 0:6] = 1.0  # patch (1, 3, 0) in a 4×4×4 grid
    tokens = enc.embed_patches(x)
    hot = tokens[0, :, 0].nonzero().flatten().tolist()
    assert hot == [1 * 16 + 3 * 4 + 0]


def test_other_input_sizes_resample_the_position_table():
    enc = small_vit()
    x = torch.randn(1, 3, 36, 24, 12)  # non-cubic: grid (6, 4, 2)
    tokens = enc.forward_features(x)
    assert tokens.shape == (1, 1 + 48, 48)
    table = enc.pos_embed_for((6, 4, 2))
    # independent trilinear resampling of the same table
    grid = enc.pos_embed.reshape(1, 4, 4, 4, 48).permute(0, 4, 1, 2, 3)
    expect = F.interpolate(grid, size=(6, 4, 2), mode="trilinear", align_corners=False)
    torch.testing.assert_close(table, expect.permute(0, 2, 3, 4, 1).reshape(1, 48, 48))
    # the built size returns the table itself, and gradients reach it from a resized input
    assert enc.pos_embed_for((4, 4, 4)) is enc.pos_embed
    enc.forward_features(x).sum().backward()
    assert enc.pos_embed.grad is not None and enc.pos_embed.grad.abs().sum() > 0


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        small_vit()(torch.randn(1, 3, 25, 24, 24))


def test_profiles_build_and_paper_size():
    for name in ("toy", "demo"):
        p = get_profile(name)
        enc = vit_from_config(p.model)
        s = p.model.img_size
        assert enc(torch.randn(1, 3, s, s, s)).shape == (1, p.model.embed_dim)
    paper = vit_from_config(ModelConfig())
    assert sum(t.numel() for t in paper.parameters()) == 89_404_416  # the authors' released count
    assert paper.pos_embed.shape == (1, 512, 768)


def test_patch_embedding_equals_the_strided_convolution():
    enc = small_vit()
    x = torch.randn(2, 3, 24, 12, 18)
    conv = enc.patch_embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(enc.patch_embed(x), conv, atol=1e-5, rtol=1e-5)
