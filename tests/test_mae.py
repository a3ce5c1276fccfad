"""MAE: patchify order and round trip, masking, loss against a hand computation, the model's plumbing."""
import numpy as np
import pytest
import torch

from fmct_lib.config import get_profile
from fmct_lib.models.mae import MaskedAutoencoder3d, patchify, unpatchify
from fmct_lib.models.vit3d import vit_from_config
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


def test_mae_model_encodes_visible_patches_only():
    torch.manual_seed(0)
    p = get_profile("toy")
    mae = MaskedAutoencoder3d.from_profile(vit_from_config(p.model), p)
    x = torch.rand(2, 3, 16, 16, 16)
    noise = torch.rand(2, mae.num_patches)
    latent, mask, _ = mae.forward_encoder(x, noise)
    assert latent.shape == (2, 1 + 16, p.model.embed_dim)  # cls + 25% of 64 patches
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
