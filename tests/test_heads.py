"""Classification heads, checked against explicit computations."""
import math

import pytest
import torch

from fmct_lib.models.heads import AttentiveHead, Classifier, LinearHead, build_head
from fmct_lib.models.vit3d import VisionTransformer3d

torch.manual_seed(0)


def test_linear_head_uses_the_cls_token_only_and_equals_formula():
    head = LinearHead(dim=12)
    tokens = torch.randn(8, 5, 12)
    head.train()
    out = head(tokens)
    cls = tokens[:, 0]
    standardised = (cls - cls.mean(0)) / torch.sqrt(cls.var(0, unbiased=False) + 1e-6)
    torch.testing.assert_close(out, standardised @ head.linear.weight.T + head.linear.bias)
    head.eval()
    changed = tokens.clone()
    changed[:, 1:] = torch.randn_like(changed[:, 1:])
    torch.testing.assert_close(head(tokens), head(changed))


def explicit_attentive(head, tokens):
    head.eval()
    B, T, D = tokens.shape
    H = head.num_heads
    d = D // H
    bn = head.norm
    x = (tokens - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    kv = x @ head.kv.weight.T
    k, v = kv[..., :D], kv[..., D:]
    queries = head.query[0]
    pooled = torch.zeros(B, D)
    for qi in range(queries.shape[0]):
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            logits = (k[:, :, sl] @ queries[qi, sl]) / math.sqrt(d)  # one scale, (B, T)
            pooled[:, sl] += (logits.softmax(-1)[..., None] * v[:, :, sl]).sum(1)
    pooled /= queries.shape[0]
    pn = head.pooled_norm
    pooled = (pooled - pn.running_mean) / torch.sqrt(pn.running_var + pn.eps)
    return pooled @ head.linear.weight.T + head.linear.bias


@pytest.mark.parametrize("num_queries", [1, 3])
def test_attentive_head_equals_explicit_attention(num_queries):
    head = AttentiveHead(dim=12, num_heads=3, num_queries=num_queries)
    head.train()
    for _ in range(3):  # give the BatchNorms non-trivial running statistics
        head(torch.randn(6, 7, 12) * 2 + 1)
    tokens = torch.randn(4, 7, 12)
    head.eval()
    torch.testing.assert_close(head(tokens), explicit_attentive(head, tokens), atol=1e-5, rtol=1e-5)


def test_attentive_head_pools_all_tokens_order_free():
    head = AttentiveHead(dim=12, num_heads=2).eval()
    tokens = torch.randn(3, 9, 12)
    perm = torch.randperm(9)
    torch.testing.assert_close(head(tokens), head(tokens[:, perm]), atol=1e-6, rtol=1e-5)
    changed = tokens.clone()
    changed[:, 4] += 5
    assert not torch.allclose(head(tokens), head(changed))  # unlike the linear probe, patches matter


def test_classifier_on_a_vit_trains_end_to_end():
    enc = VisionTransformer3d(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    for kind in ("linear", "attentive"):
        model = Classifier(enc, build_head(kind, enc))
        logits = model(torch.randn(4, 3, 16, 16, 16))
        assert logits.shape == (4, 2)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0])).backward()
        assert enc.patch_embed.proj.weight.grad is not None and enc.patch_embed.proj.weight.grad.abs().sum() > 0
        enc.zero_grad()
    with pytest.raises(ValueError, match="unknown head"):
        build_head("mlp", enc)
