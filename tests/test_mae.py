"""MAE: patchify order and round trip, masking, loss against a hand computation, the model's plumbing."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmct_lib.config import get_profile
from fmct_lib.models.mae import MaskedAutoencoder3d, patchify, unpatchify
from fmct_lib.models.vit3d import VisionTransformer3d, vit_from_config
from fmct_lib.ssl.mae import mae_loss, random_masking


pytestmark = pytest.mark.usefixtures("one_thread")


def test_patchify_element_order_by_brute_force():
    B, C, p, g = 2, 3, 2, (2, 3, 2)
    x = torch.randn(B, C, g[0] * p, g[1] * p, g[2] * p)
    patches = patchify(x, p)
    assert patches.shape == (B, g[0] * g[1] * g[2], p ** 3 * C)
    for b in range(B):
        for i0 in range(g[0]):
            for i1 in range(g[1]):
                for i2 in range(g[2]):
                    n = (i0 * g[1] + i1) * g[2] + i2  # grid axis 0 slowest (Conv3d flatten order)
                    for a in range(p):
                        for bb in range(p):
                            for d in range(p):
                                for c in range(C):
                                    e = ((a * p + bb) * p + d) * C + c  # channel fastest
                                    assert patches[b, n, e] == x[b, c, i0 * p + a, i1 * p + bb, i2 * p + d]


def test_patch_order_matches_encoder_tokens():
    # a Conv3d that averages each patch gives tokens in the same order as patchify's patches
    x = torch.randn(1, 3, 8, 8, 8)
    conv = torch.nn.Conv3d(3, 1, 4, stride=4, bias=False)
    torch.nn.init.constant_(conv.weight, 1 / (3 * 64))
    tokens = conv(x).flatten(2)[0, 0]
    assert torch.allclose(patchify(x, 4).mean(-1)[0], tokens, atol=1e-6)


def test_unpatchify_inverts_patchify():
    x = torch.randn(2, 3, 8, 12, 4)
    assert torch.equal(unpatchify(patchify(x, 4), 4, (2, 3, 1), 3), x)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 3, 7, 8, 8), 4)
    with pytest.raises(ValueError, match="do not match"):
        unpatchify(torch.randn(1, 5, 192), 4, (2, 2, 2), 3)


def test_random_masking_ratio_and_restore():
    B, N, D = 3, 64, 5
    tokens = torch.randn(B, N, D)
    noise = torch.rand(B, N)
    visible, mask, ids_restore = random_masking(tokens, 0.75, noise)
    assert visible.shape == (B, 16, D)
    assert torch.equal(mask.sum(1), torch.full((B,), 48.0))
    for b in range(B):
        keep = torch.argsort(noise[b])[:16]  # the 16 smallest noises are kept, in noise order
        assert torch.equal(visible[b], tokens[b, keep])
        expected = torch.ones(N)
        expected[keep] = 0
        assert torch.equal(mask[b], expected)
        # [kept, removed] gathered with ids_restore is the original order
        order = torch.argsort(noise[b])
        assert torch.equal(order[ids_restore[b]], torch.arange(N))
    with pytest.raises(ValueError):
        random_masking(tokens, 1.0, noise)


def test_mae_loss_matches_hand_computation():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8)) * 3 + 1
    mask = (rng.random((2, 6)) < 0.5).astype(float)
    mask[0, 0] = 1
    raw = [((pred[b, n] - target[b, n]) ** 2).mean() for b in range(2) for n in range(6) if mask[b, n]]
    norm = []
    for b in range(2):
        for n in range(6):
            if mask[b, n]:
                t = target[b, n]
                tn = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
                norm.append(((pred[b, n] - tn) ** 2).mean())
    args = [torch.tensor(a, dtype=torch.float32) for a in (pred, target, mask)]
    assert mae_loss(*args).item() == pytest.approx(np.mean(raw), rel=1e-5)
    assert mae_loss(*args, norm_pix=True).item() == pytest.approx(np.mean(norm), rel=1e-5)


def test_mae_loss_ignores_visible_patches():
    pred, target = torch.randn(2, 10, 4), torch.randn(2, 10, 4)
    mask = torch.zeros(2, 10)
    mask[:, :7] = 1
    changed = pred.clone()
    changed[:, 7:] += 100.0
    assert mae_loss(changed, target, mask) == mae_loss(pred, target, mask)


def _patch_cube(x, b, n, p, grid):
    """Patch ``n`` of volume ``b`` cut straight out of ``x`` (C, p, p, p); grid axis 0 slowest, axis 2 fastest."""
    i0, rest = divmod(n, grid[1] * grid[2])
    i1, i2 = divmod(rest, grid[2])
    return x[b, :, i0 * p:(i0 + 1) * p, i1 * p:(i1 + 1) * p, i2 * p:(i2 + 1) * p]


def _brute_block_inputs(mae, x, noise, latent):
    """What the first encoder block and the first decoder block must see, built patch by patch.

    Encoder: ``[cls, embed(patch keep[0]) + pos[keep[0]], ...]`` with ``keep`` the patches of smallest noise, in
    noise order, each embedded alone by the Conv3d. Decoder: ``[embed(latent cls), then for every patch n in patch
    order: embed(latent[1 + j]) + dpos[n] if n = keep[j] is visible, else mask_token + dpos[n]]``.
    """
    enc, p = mae.encoder, mae.patch_size
    grid, N = enc.grid_size, mae.num_patches
    n_keep = latent.shape[1] - 1
    w, bias = enc.patch_embed.proj.weight, enc.patch_embed.proj.bias
    enc_in, dec_in = [], []
    for b in range(x.shape[0]):
        keep = torch.argsort(noise[b])[:n_keep].tolist()
        toks = [enc.cls_token[0, 0]]
        for n in keep:
            emb = F.conv3d(_patch_cube(x, b, n, p, grid)[None], w, bias).flatten()
            toks.append(emb + enc.pos_embed[0, n])
        enc_in.append(torch.stack(toks))
        toks = [mae.decoder_embed(latent[b, 0])]
        for n in range(N):
            src = mae.decoder_embed(latent[b, 1 + keep.index(n)]) if n in keep else mae.mask_token[0, 0]
            toks.append(src + mae.decoder_pos_embed[0, n])
        dec_in.append(torch.stack(toks))
    return torch.stack(enc_in), torch.stack(dec_in)


def test_mae_puts_every_token_at_its_own_patch_by_brute_force():
    """With no blocks (encoder and decoder depth 0) every output token depends on its own patch only, so the whole
    forward can be recomputed patch by patch: latent token 1 + j is the normed embedding + position of patch
    keep[j]; the prediction for patch n uses that latent token if n is visible, else the mask token, with the
    decoder position of n (catches a missing or wrong ``ids_restore`` un-shuffle); the mask is 1 exactly off
    ``keep``; the loss is the mean per-patch MSE over the masked patches, against the patch cut out of ``x``."""
    torch.manual_seed(0)
    enc = VisionTransformer3d(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=0, num_heads=2)
    mae = MaskedAutoencoder3d(enc, decoder_dim=24, decoder_depth=0, decoder_heads=2)
    with torch.no_grad():  # positions unlike the sine-cosine start, as after training
        enc.pos_embed.add_(0.5 * torch.randn_like(enc.pos_embed))
    x = torch.rand(2, 3, 16, 16, 16)
    noise = torch.rand(2, mae.num_patches)
    with torch.no_grad():
        latent, _, _ = mae.forward_encoder(x, noise)
        loss, pred, mask = mae(x, noise)
        enc_in, dec_in = _brute_block_inputs(mae, x, noise, latent)
        torch.testing.assert_close(latent, enc.norm(enc_in), rtol=1e-5, atol=1e-5)
        expected_pred = mae.decoder_pred(mae.decoder_norm(dec_in[:, 1:]))
    torch.testing.assert_close(pred, expected_pred, rtol=1e-5, atol=1e-5)
    sq_errs = []
    for b in range(2):
        keep = set(torch.argsort(noise[b])[:16].tolist())
        for n in range(mae.num_patches):
            assert mask[b, n].item() == (0.0 if n in keep else 1.0)
            if n not in keep:  # target voxels in (i0, i1, i2, c) order, channel fastest
                target = _patch_cube(x, b, n, 4, enc.grid_size).permute(1, 2, 3, 0).reshape(-1)
                sq_errs.append(((pred[b, n] - target) ** 2).mean().item())
    assert len(sq_errs) == 2 * 48
    assert loss.item() == pytest.approx(np.mean(sq_errs), rel=1e-5)


def test_mae_model_encodes_visible_patches_only():
    """The toy MAE (with blocks): the first encoder block sees the cls token and the kept patches only, each with
    its own position; the first decoder block sees every token back at its patch (brute force, hooks)."""
    torch.manual_seed(0)
    p = get_profile("toy")
    mae = MaskedAutoencoder3d.from_profile(vit_from_config(p.model), p)
    x = torch.rand(2, 3, 16, 16, 16)
    noise = torch.rand(2, mae.num_patches)
    seen = {}
    hooks = [block.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0].detach()))
             for key, block in (("enc", mae.encoder.blocks[0]), ("dec", mae.decoder_blocks[0]))]
    with torch.no_grad():
        latent, mask, ids_restore = mae.forward_encoder(x, noise)
        mae.forward_decoder(latent, ids_restore)
        enc_in, dec_in = _brute_block_inputs(mae, x, noise, latent)
    for h in hooks:
        h.remove()
    assert latent.shape == (2, 1 + 16, p.model.embed_dim)  # cls + 25% of 64 patches
    torch.testing.assert_close(seen["enc"], enc_in, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["dec"], dec_in, rtol=1e-5, atol=1e-5)
    loss, pred, mask = mae(x, noise)
    assert pred.shape == (2, 64, 4 ** 3 * 3) and torch.isfinite(loss)
    assert loss.item() == pytest.approx(mae_loss(pred, patchify(x, 4), mask).item(), rel=1e-6)
    assert "decoder_pos_embed" not in dict(mae.named_parameters())  # fixed sine-cosine table
    loss.backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert mae.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patches"):
        mae(torch.rand(1, 3, 20, 20, 20), torch.rand(1, 125))


def test_the_norm_pix_option_reaches_the_loss_the_training_step_takes():
    """``norm_pix_loss`` from a run's options, through the MAE task, to the model's loss: the target becomes each
    patch normalised by its own mean and unbiased variance (checked by hand in NumPy)."""
    from fmct_lib.data.augment import AugmentConfig
    from fmct_lib.train import run_config
    from fmct_lib.train.methods.mae import MAEOptions, MAETask
    p = get_profile("toy")
    losses = {}
    for norm_pix in (False, True):
        run = run_config("mae", p, 8, batch_size=4, options=MAEOptions(norm_pix_loss=norm_pix))
        torch.manual_seed(0)
        task = MAETask(p, AugmentConfig.from_profile(p), run)
        x, noise = torch.rand(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(1)), torch.rand(2, 64)
        losses[norm_pix], pred, mask = task.model(x, noise)
    target = patchify(x, 4).numpy().astype(np.float64)
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred.detach().numpy().astype(np.float64) - target) ** 2).mean(-1)
    m = mask.numpy()
    assert losses[True].item() == pytest.approx((per_patch * m).sum() / m.sum(), rel=1e-5)
    assert abs(losses[True].item() - losses[False].item()) > 0.1 * losses[False].item()
