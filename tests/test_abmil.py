"""ABMIL, gated attention MIL pooling as a head (issue 27, item 2): checked against a hand-set case computed with
NumPy, for order invariance, and for learning to find the instance that makes a bag positive."""
import numpy as np
import torch

from fmct_lib.models.abmil import ABMILHead


def _f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)  # exactly the decimals NumPy uses below


def _hand_set_head() -> ABMILHead:
    """D = 3 features, 2 attention units, 2 classes; every weight set by hand."""
    head = ABMILHead(dim=3, num_classes=2, hidden_dim=2).double()
    with torch.no_grad():
        head.attention_v.weight.copy_(_f64([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]]))
        head.attention_v.bias.copy_(_f64([0.1, -0.2]))
        head.attention_u.weight.copy_(_f64([[-0.3, 0.8, 0.0], [0.2, 0.2, 0.2]]))
        head.attention_u.bias.copy_(_f64([0.0, 0.5]))
        head.attention_w.weight.copy_(_f64([[1.5, -2.0]]))
        head.linear.weight.copy_(_f64([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]))
        head.linear.bias.copy_(_f64([0.0, -0.25]))
    return head


TOKENS = np.array([
    [[9.0, 9.0, 9.0], [1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [2.0, 2.0, 0.0], [-1.0, 0.5, 0.5]],
    [[0.0, 0.0, 0.0], [0.5, -0.5, 1.0], [3.0, 0.0, 0.0], [0.0, -2.0, 1.0], [1.0, 1.0, 1.0]],
])  # (B=2, 1 + K=4, D=3); the first token of each bag is the encoder's summary, not an instance


def _numpy_abmil(tokens: np.ndarray):
    """Ilse et al. (2018) Eq. 9 written out: a_k = softmax(wᵀ(tanh(V h_k + b_V) ⊙ σ(U h_k + b_U))), z = Σ a_k h_k,
    then the linear layer."""
    V, bV = np.array([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]]), np.array([0.1, -0.2])
    U, bU = np.array([[-0.3, 0.8, 0.0], [0.2, 0.2, 0.2]]), np.array([0.0, 0.5])
    w = np.array([1.5, -2.0])
    W, b = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]), np.array([0.0, -0.25])
    weights, pooled = [], []
    for bag in tokens:
        h = bag[1:]
        scores = np.array([w @ (np.tanh(V @ hk + bV) * (1.0 / (1.0 + np.exp(-(U @ hk + bU))))) for hk in h])
        a = np.exp(scores - scores.max())
        a /= a.sum()
        weights.append(a)
        pooled.append((a[:, None] * h).sum(axis=0))
    weights, pooled = np.array(weights), np.array(pooled)
    return weights, pooled, pooled @ W.T + b


def test_abmil_matches_the_hand_computed_case():
    head = _hand_set_head()
    tokens = torch.tensor(TOKENS)
    weights, pooled, logits = _numpy_abmil(TOKENS)
    np.testing.assert_allclose(head.attention(tokens).detach().numpy(), weights, rtol=1e-12)
    np.testing.assert_allclose(head.pool(tokens).detach().numpy(), pooled, rtol=1e-12)
    np.testing.assert_allclose(head(tokens).detach().numpy(), logits, rtol=1e-12)
    assert not np.allclose(weights, 0.25)  # the case is not a uniform average in disguise


def test_a_constant_score_averages_the_instances():
    """With V = 0 every instance scores the same: the weights are 1/K and the bag is the instances' mean."""
    head = _hand_set_head()
    with torch.no_grad():
        head.attention_v.weight.zero_()
        head.attention_u.weight.zero_()
    tokens = torch.tensor(TOKENS)
    np.testing.assert_allclose(head.attention(tokens).detach().numpy(), np.full((2, 4), 0.25), rtol=1e-12)
    np.testing.assert_allclose(head.pool(tokens).detach().numpy(), TOKENS[:, 1:].mean(axis=1), rtol=1e-12)


def test_abmil_ignores_instance_order_and_the_summary_token():
    torch.manual_seed(0)
    head = ABMILHead(dim=16, num_classes=2).eval()
    tokens = torch.randn(3, 1 + 10, 16)
    order = torch.randperm(10)
    shuffled = torch.cat([tokens[:, :1], tokens[:, 1:][:, order]], dim=1)
    torch.testing.assert_close(head(shuffled), head(tokens), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.attention(shuffled), head.attention(tokens)[:, order])
    resummarised = tokens.clone()
    resummarised[:, 0] = 100.0
    torch.testing.assert_close(head(resummarised), head(tokens))


def test_abmil_learns_to_attend_to_the_witness_instance():
    """Bags of 8 noise instances; a positive bag holds one witness (a fixed direction). After training, the
    attention of positive bags is on the witness (uniform attention would give it 1/8)."""
    g = torch.Generator().manual_seed(0)
    n, k, d = 128, 8, 6
    tokens = torch.randn(n, 1 + k, d, generator=g)
    labels = torch.arange(n) % 2
    where = torch.randint(0, k, (n,), generator=g)
    witness = torch.tensor([3.0, -3.0, 0.0, 0.0, 0.0, 0.0])
    tokens[labels == 1, 1 + where[labels == 1]] += witness
    torch.manual_seed(0)
    head = ABMILHead(dim=d, num_classes=2, hidden_dim=16)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.02)
    for _ in range(300):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(tokens), labels)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        attention = head.attention(tokens)
        on_witness = attention[labels == 1, where[labels == 1]]
        accuracy = (head(tokens).argmax(1) == labels).float().mean()
    assert accuracy > 0.95
    assert on_witness.mean() > 0.5


def test_register_tokens_are_no_instances():
    """A ViT with register tokens (the authors' yaml variant has 4): the head pools the patches alone, as the same
    head does on the tokens without the registers; ``build_head`` sizes it from ``encoder.num_prefix_tokens``."""
    from fmct_lib.models.heads import build_head
    from fmct_lib.models.vit3d import vit_from_config
    encoder = vit_from_config(dict(img_size=16, patch_size=8, in_chans=3, embed_dim=24, depth=1, num_heads=2,
                                   mlp_ratio=2.0, qkv_bias=True, num_register_tokens=4))
    head = build_head("abmil", encoder)
    assert head.num_prefix_tokens == 5
    tokens = encoder.forward_features(torch.randn(2, 3, 16, 16, 16))  # (2, 1 + 4 + 8, 24)
    assert head.attention(tokens).shape == (2, 8)                      # 8 patches, not 12 "instances"
    plain = ABMILHead(dim=24, num_classes=2)
    plain.load_state_dict(head.state_dict())
    without_registers = torch.cat([tokens[:, :1], tokens[:, 5:]], dim=1)
    assert torch.allclose(head(tokens), plain(without_registers), atol=1e-6)
    assert plain.attention(tokens).shape == (2, 12)  # what it pooled before: the registers as instances
