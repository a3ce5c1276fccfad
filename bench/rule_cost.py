"""What the convergence rule's training costs in arithmetic, and the least time this machine needs for it (issue 23).

    .venv/bin/python bench/rule_cost.py [--profile demo] [--target-min 45]

Reads the finished downstream runs under ``runs/downstream/<profile>`` (a ``make reproduce`` writes them), keeps
each classifier once (runs that share a training signature train one classifier: ``training_signature``), and
adds up the ViT's FLOPs of every step the rule trained (forward + backward, ``models.efficiency.vit_flops``) and
of every validation pass. Frozen protocols (probes on cached features), other models' encoders and runs trained
under another patience or cap than the profile's are listed but not counted: their cost is small, not the 3-D
ViT's, or not the main job's. Then it measures this machine's peak dense fp32 matmul rate (the best of seven
medians) on all its threads and divides: the time the rule's arithmetic needs at that rate is a lower bound on the
main job's training time here, whatever the code does, to set beside the target.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fmct_lib.config import get_profile  # noqa: E402
from fmct_lib.downstream.protocols import get_protocol  # noqa: E402
from fmct_lib.downstream.runs import training_signature  # noqa: E402
from fmct_lib.models.efficiency import cpu_name, vit_flops  # noqa: E402
from fmct_lib.paths import runs_root  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vit import matmul_flops_per_s  # noqa: E402  (bench/vit.py)


def trained_runs(root: Path) -> dict[str, dict]:
    """One finished run record per trained classifier (the first found of those that share a training signature)."""
    runs = {}
    for config in sorted(root.glob("**/config.json")):
        if not (config.parent / "done").exists():
            continue
        record = json.loads(config.read_text())
        key = json.dumps(training_signature(record["signature"]), sort_keys=True)
        runs.setdefault(key, record)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--target-min", type=float, default=45.0, help="the main job's target, minutes")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile)
    root = runs_root() / "downstream" / profile.name
    runs = trained_runs(root)
    if not runs:
        print(f"no finished runs under {root}: run `make reproduce` (or the notebooks) first")
        return 0
    step = profile.finetune_batch_size * vit_flops(profile.model, backward=True)["total"]
    forward = vit_flops(profile.model)["total"]
    groups, skipped = defaultdict(lambda: [0, 0, 0.0]), defaultdict(int)
    for record in runs.values():
        sig, stopping = record["signature"], record.get("stopping") or {}
        ours = sig["encoder"] is None or not str(sig["encoder"]).startswith("external:")
        rule = (sig["hparams"]["patience"], sig["hparams"]["max_epochs"]) == (profile.finetune_patience,
                                                                               profile.finetune_max_epochs)
        if get_protocol(sig["protocol"]).frozen or not ours or not rule or not stopping.get("stopped_epoch"):
            skipped[sig["protocol"] + ("" if ours else " (other encoder)") + ("" if rule else " (another rule)")] += 1
            continue
        flops = stopping["stopped_step"] * step + stopping["stopped_epoch"] * record["n_val"] * forward
        group = groups[(sig["protocol"], sig["k"] or "all")]
        group[0] += 1
        group[1] += stopping["stopped_epoch"]
        group[2] += flops
    print(f"{root}: {len(runs)} trained classifiers; profile {profile.name}: {step / 1e9:.2f} GFLOP per training "
          f"step (batch {profile.finetune_batch_size}, forward + backward), {forward / 1e6:.0f} MFLOP per validation "
          f"scan")
    print(f"{'protocol':10} {'K':>4} {'runs':>5} {'epochs':>7} {'TFLOP':>8}")
    for (protocol, k), (n, epochs, flops) in sorted(groups.items(), key=lambda kv: str(kv[0])):
        print(f"{protocol:10} {k!s:>4} {n:5d} {epochs:7d} {flops / 1e12:8.1f}")
    total = sum(g[2] for g in groups.values())
    print(f"{'total':10} {'':>4} {sum(g[0] for g in groups.values()):5d} {sum(g[1] for g in groups.values()):7d} "
          f"{total / 1e12:8.1f}")
    print("not counted (frozen encoder on cached features, another model, no deep model, or a rule other than the "
          "profile's): "
          + ", ".join(f"{name} {n}" for name, n in sorted(skipped.items())))
    # the best of several medians: the rate varies from second to second on a shared machine, and a bound wants the peak
    rate = max(matmul_flops_per_s(torch.device("cpu")) for _ in range(7))
    need = total / rate / 60
    print(f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads: dense fp32 matmul "
          f"{rate / 1e9:.1f} GFLOP/s")
    print(f"the rule's training arithmetic at that rate: **{need:.0f} min**, {need / args.target_min:.1f}× the "
          f"{args.target_min:.0f}-minute target (a lower bound: the job also preprocesses, predicts and runs "
          f"the statistics)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
