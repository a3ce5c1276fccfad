"""Downstream benchmarks, measured side by side in one run.

1. Embeddings per second of the frozen encoder (demo and paper model sizes): cached canvases →
   ``preprocess.model_input`` → cls embedding. Uses the synthetic dataset's cache when it is built,
   otherwise synthesises int16 HU canvases in memory (and says so).
2. One bootstrap (100×) + paired permutation test (1,000×) on 10,000 scans × 10 tasks with the
   vectorised statistics, against the plain scikit-learn loop they replace (the loop is timed on a
   fraction of the replicates and scaled, as stated in the output).
3. One fine-tuning step at the demo size (batch of the profile, 3×32³): the share of the batch
   augmentation (``finetuning.augment_batch``, which flips only the drawn volumes) against the
   forward/backward/AdamW step, and against the whole-batch ``torch.where`` flip it replaced (the same
   output, checked here).
4. A frozen probe at the demo size: the attentive head trained by ``fit`` for a few epochs through the
   frozen encoder (what the probes did before) against the same epochs on the encoder's tokens computed once
   (``downstream.features``, what they do now), with the head's predictions compared.

    .venv/bin/python bench/downstream.py [--profiles demo paper] [--batches 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from fmct_lib.config import get_profile
from fmct_lib.evaluate import bootstrap_ci, paired_permutation_test
from fmct_lib.evaluate.stats import bootstrap_indices, permutation_swaps
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.data.preprocess import model_input, paper_spec


def canvases(profile, n: int):
    """``n`` cached canvases of the synthetic dataset if its cache exists, else synthetic int16 HU canvases."""
    spec = paper_spec(profile)
    try:
        from fmct_lib.data.cache import CachedVolumes
        from fmct_lib.data.manifest import load_scans
        ids = list(load_scans("synthetic")["scan_id"][:n])
        data = CachedVolumes("synthetic", spec, scan_ids=ids)
        return torch.stack([torch.as_tensor(data[i]["volume"]) for i in range(len(ids))]), "synthetic cache"
    except Exception as e:  # no cache yet: say so and measure the encoder on in-memory canvases
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        g = torch.Generator().manual_seed(0)
        c = profile.canvas
        hu = torch.randint(-1000, 1500, (n, c, c, c), generator=g, dtype=torch.int16)
        return hu, f"in-memory canvases (no cache: {reason})"


@torch.no_grad()
def bench_embeddings(profile_name: str, batches: int) -> None:
    profile = get_profile(profile_name)
    spec = paper_spec(profile)
    batch = 2 if profile.input_size >= 96 else 8
    volumes, origin = canvases(profile, batch * batches)
    encoder = vit_from_config(profile.model).eval()
    encoder(model_input(volumes[:1], spec))  # warm-up
    t_prep = t_enc = 0.0
    for s in range(0, len(volumes), batch):
        t0 = time.perf_counter()
        x = model_input(volumes[s:s + batch], spec)
        t1 = time.perf_counter()
        encoder(x)
        t2 = time.perf_counter()
        t_prep, t_enc = t_prep + t1 - t0, t_enc + t2 - t1
    n = len(volumes)
    m = profile.model
    print(f"[{profile_name}] ViT {m.embed_dim}x{m.depth} on {m.img_size}³ ({origin}), {n} volumes, "
          f"{torch.get_num_threads()} threads: {n / (t_prep + t_enc):.2f} embeddings/s "
          f"(model_input {1e3 * t_prep / n:.1f} ms, encoder {1e3 * t_enc / n:.1f} ms per volume)")


def bench_statistics(n: int = 10_000, tasks: int = 10, n_boot: int = 100, n_perm: int = 1000) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((n, tasks)) < 0.2).astype(int)
    a = 1 / (1 + np.exp(-(1.5 * labels + rng.normal(size=labels.shape))))
    b = 1 / (1 + np.exp(-(1.0 * labels + rng.normal(size=labels.shape))))
    ids = [f"s{i:05d}" for i in range(n)]

    def table(scores):
        return pd.DataFrame({"scan_id": np.repeat(ids, tasks), "task": np.tile([f"t{j}" for j in range(tasks)], n),
                             "label": labels.ravel(), "probability": scores.ravel()})
    pa, pb = table(a), table(b)
    t0 = time.perf_counter()
    bootstrap_ci(pa, n_boot=n_boot)
    t1 = time.perf_counter()
    result = paired_permutation_test(pa, pb, n_perm=n_perm)
    t2 = time.perf_counter()
    ours = t2 - t0

    # the plain loop: sklearn on each resample / permutation, timed on a fraction and scaled
    frac_boot, frac_perm = 10, 10
    idx = bootstrap_indices(n, frac_boot)
    swaps = permutation_swaps(n, frac_perm)
    t3 = time.perf_counter()
    for r in idx:
        for t in range(tasks):
            roc_auc_score(labels[r, t], a[r, t]), average_precision_score(labels[r, t], a[r, t])
    t4 = time.perf_counter()
    for sw in swaps:
        for t in range(tasks):
            sa, sb = np.where(sw, b[:, t], a[:, t]), np.where(sw, a[:, t], b[:, t])
            roc_auc_score(labels[:, t], sa) - roc_auc_score(labels[:, t], sb)
            average_precision_score(labels[:, t], sa) - average_precision_score(labels[:, t], sb)
    t5 = time.perf_counter()
    loop = (t4 - t3) * n_boot / frac_boot + (t5 - t4) * n_perm / frac_perm
    macro_p = result.query("task == 'macro' and metric == 'auroc'")["p_value"].iloc[0]
    print(f"[statistics] {n} scans × {tasks} tasks: bootstrap {n_boot}× {t1 - t0:.2f} s + permutation "
          f"{n_perm}× {t2 - t1:.2f} s = {ours:.2f} s (macro-AUROC p = {macro_p:.4f})")
    print(f"[statistics] scikit-learn loop, same work (timed on {frac_boot} resamples + {frac_perm} "
          f"permutations, scaled): {loop:.1f} s  → vectorised is {loop / ours:.0f}× faster")


def bench_finetune_step(profile_name: str = "demo", steps: int = 20) -> None:
    import torch.nn.functional as F

    from fmct_lib.downstream.training import HParams, augment_batch
    from fmct_lib.models.heads import Classifier, build_head
    profile = get_profile(profile_name)
    hp = HParams.from_profile(profile)
    x = torch.randn(hp.batch_size, 3, *(3 * [profile.input_size]))
    y = torch.arange(hp.batch_size) % 2

    def whole_batch_flips(x, generator):  # what augment_batch did before: every axis rewrites the batch
        B = x.shape[0]
        for axis in hp.flip_axes:
            flip = torch.rand(B, generator=generator) < hp.flip_p
            if flip.any():
                x = torch.where(flip.view(B, 1, 1, 1, 1), x.flip(2 + axis), x)
        apply = torch.rand(B, generator=generator) < hp.shift_p
        offset = (torch.rand(B, generator=generator) * 2 - 1) * hp.shift * apply
        return x + offset.view(B, 1, 1, 1, 1)

    def timed(fn):
        g = torch.Generator().manual_seed(0)
        fn(g)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(g)
        return (time.perf_counter() - t0) / steps
    same = all(torch.equal(augment_batch(x, hp, torch.Generator().manual_seed(s)),
                           whole_batch_flips(x, torch.Generator().manual_seed(s))) for s in range(20))
    t_aug = timed(lambda g: augment_batch(x, hp, g))
    t_where = timed(lambda g: whole_batch_flips(x, g))
    torch.manual_seed(0)
    encoder = vit_from_config(profile.model)
    model = Classifier(encoder, build_head("linear", encoder))
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step(g):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_step = timed(step)
    print(f"[finetune step, {profile_name}] batch {hp.batch_size}, {torch.get_num_threads()} threads: "
          f"forward+backward+AdamW {1e3 * t_step:.1f} ms; augmentation {1e3 * t_aug:.2f} ms "
          f"({100 * t_aug / t_step:.0f}% of it), whole-batch flips {1e3 * t_where:.2f} ms "
          f"({100 * t_where / t_step:.0f}%): {t_where / t_aug:.1f}× slower, same output: {same}")


def bench_frozen_probe(profile_name: str = "demo", n: int = 256, epochs: int = 3) -> None:
    from dataclasses import replace

    from fmct_lib.data.inputs import VolumeSource
    from fmct_lib.downstream.features import encoder_tokens
    from fmct_lib.downstream.protocols import _Tokens
    from fmct_lib.downstream.training import HParams, fit, predict
    from fmct_lib.models.heads import Classifier, build_head
    profile = get_profile(profile_name)
    torch.manual_seed(0)
    encoder = vit_from_config(profile.model).eval()
    x = torch.rand(n, 3, *(3 * [profile.input_size]))
    y = np.arange(n) % 2
    hp = replace(HParams.from_profile(profile, max_epochs=epochs, patience=epochs), flip_p=0.0, shift_p=0.0)
    head_state = build_head("attentive", encoder).state_dict()

    def head():
        h = build_head("attentive", encoder)
        h.load_state_dict(head_state)
        return h
    t0 = time.perf_counter()
    through = Classifier(encoder, head())
    fit(through, VolumeSource(x), y, hp, frozen=True, progress=False)
    old = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = encoder_tokens(encoder, "bench", VolumeSource(x, key=None), hp.batch_size)
    probe = Classifier(_Tokens(), head())
    fit(probe, VolumeSource(tokens), y, hp, frozen=True, progress=False)
    new = time.perf_counter() - t0
    same = np.abs(predict(through, VolumeSource(x), 64) - predict(probe, VolumeSource(tokens), 64)).max()
    print(f"[frozen probe, {profile_name}] attentive head, {epochs} epochs of {hp.subset} draws on {n} scans: "
          f"through the encoder {old:.1f} s, on cached tokens {new:.1f} s (encoder once included) → "
          f"{old / new:.1f}× faster; largest difference in P(positive) {same:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["demo", "paper"])
    parser.add_argument("--batches", type=int, default=2, help="encoder batches per profile")
    args = parser.parse_args()
    bench_statistics()
    bench_finetune_step()
    bench_frozen_probe()
    for name in args.profiles:
        bench_embeddings(name, args.batches)


if __name__ == "__main__":
    main()
