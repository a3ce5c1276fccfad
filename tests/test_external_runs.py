"""Other foundation models in the downstream runs (issue 27, items 3-4): the ``ExternalRef`` a run, a sweep and an
embedding take, what names its runs and cached features, the preprocessing it insists on, and the one-channel
presets of CT-FM and Merlin through the real cache.

The runs use in-memory volumes (the cache replaced, as in ``test_downstream``) with the channels and size of
the preprocessing asked for; a "published" CT-FM is a small MONAI ``SegResEncoder`` whose tensors are written
here, so that two weight files differ in their bytes only.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from fmct_lib.config import ModelConfig, get_profile
from fmct_lib.data import inputs
from fmct_lib.data.manifest import write_scans
from fmct_lib.data.preprocess import PRESETS, ctfm_spec, merlin_spec, paper_spec, preprocess, preset_spec
from fmct_lib.downstream import embeddings as embed_module, run_protocol, runs as runs_module
from fmct_lib.downstream.embeddings import embed
from fmct_lib.models.external import ExternalRef, build_encoder

TOY = get_profile("toy").replace(
    model=ModelConfig(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2),
    finetune_subset=16, finetune_max_epochs=2, finetune_patience=2)
SMALL_CTFM = {"init_filters": 4, "blocks_down": [1, 1, 1]}


def quiet(ref: ExternalRef, profile=TOY):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ref.build(profile)


def publish_ctfm(path, seed: int):
    """A CT-FM model folder (config.json + model.safetensors) of a small SegResEncoder initialised from ``seed``."""
    from monai.networks.nets.segresnet_ds import SegResEncoder
    config = {"spatial_dims": 3, "in_channels": 1, "init_filters": 4, "blocks_down": [1, 1, 1]}
    torch.manual_seed(seed)
    net = SegResEncoder(**{**config, "blocks_down": (1, 1, 1)})
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
    return path


def folder_sha256(folder) -> str:
    """The sha256 the reference should give a model folder, written out: each file's name, a NUL, its bytes."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir()):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ the reference
def test_a_reference_is_named_by_its_weights_bytes_or_as_random_and_pickles(tmp_path):
    a, b = publish_ctfm(tmp_path / "a", seed=1), publish_ctfm(tmp_path / "b", seed=2)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in a.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    ref_a, ref_b, ref_copy = ExternalRef("ctfm", a), ExternalRef("ctfm", str(b)), ExternalRef("ctfm", copy)
    assert ref_a.identity == f"ctfm-{folder_sha256(a)[:16]}" and ref_b.identity == f"ctfm-{folder_sha256(b)[:16]}"
    assert ref_a.identity != ref_b.identity and ref_copy.identity == ref_a.identity  # bytes, not the path
    assert ref_a.signature == f"external:{ref_a.identity}" and ref_a.weights == str(a.resolve())
    file_ref = ExternalRef("ctfm", a / "model.safetensors")  # a bare file: the sha256 of its bytes
    assert file_ref.identity == f"ctfm-{hashlib.sha256((a / 'model.safetensors').read_bytes()).hexdigest()[:16]}"

    random0, random1 = ExternalRef("ctfm", options=SMALL_CTFM), ExternalRef("ctfm", options=SMALL_CTFM, seed=1)
    options_hash = hashlib.sha256(json.dumps({"blocks_down": [1, 1, 1], "init_filters": 4}, sort_keys=True)
                                  .encode()).hexdigest()[:8]
    assert random0.identity == f"ctfm-random-s0-{options_hash}" and random1.identity.startswith("ctfm-random-s1-")
    assert ExternalRef("resnet3d").identity == "resnet3d-random-s0-r1"  # revision 1: the stem fixed (runs before it not reused)
    assert "RANDOMLY INITIALISED" in random0.describe() and "published weights" in ref_a.describe()

    # it crosses process boundaries (sweeps send it to workers) and builds the same encoder there
    back = pickle.loads(pickle.dumps(random0))
    assert back == random0 and back.identity == random0.identity
    first, again = quiet(random0), quiet(back)
    for (k, v), (_, w) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    assert not torch.equal(first.state_dict()["encoder.conv_init.weight"],
                           quiet(random1).state_dict()["encoder.conv_init.weight"])
    loaded = ExternalRef("ctfm", a).build(TOY)
    assert loaded.load_report.complete and loaded.weights == str(a.resolve())

    with pytest.raises(ValueError, match="unknown external encoder 'google'"):
        ExternalRef("google")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        ExternalRef("ctfm", tmp_path / "missing")


def test_each_reference_reads_its_own_preset():
    assert {"paper", "reference", "ctfm", "merlin"} <= set(PRESETS)
    assert ExternalRef("ctfm").spec(TOY) == ctfm_spec(TOY) == preset_spec("ctfm", TOY)
    assert ExternalRef("merlin").spec("paper") == merlin_spec("paper")
    for name in ("resnet3d", "dinov3", "vjepa2"):
        assert ExternalRef(name).spec(TOY) == paper_spec(TOY)
    # V-JEPA 2's positions are built for the preset's input side unless the options set it
    tiny = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1, "patch_size": 8,
            "pred_hidden_size": 16, "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1}
    assert quiet(ExternalRef("vjepa2", options=tiny)).frame_size == TOY.input_size


# ------------------------------------------------------------------------------------------ runs
@pytest.fixture
def world(tmp_path, monkeypatch):
    """A scan table (train / val / test) and in-memory inputs with the channels and side of the spec asked for."""
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    n = 40
    table = pd.DataFrame({"scan_id": [f"s{i:02d}" for i in range(n)], "patient_id": [f"p{i:02d}" for i in range(n)],
                          "path": "x.nii.gz", "split": (["train"] * 6 + ["val"] * 2 + ["test"] * 2) * (n // 10),
                          "manufacturer": "GE", "slice_thickness_mm": 1.0, "spacing": "1,1,1",
                          "ich": [int(v) for v in rng.random(n) < 0.5]})
    write_scans(table, "toyset")
    asked = []

    def fake_source(dataset, scans, spec, num_workers=0):
        asked.append(spec)
        g = torch.Generator().manual_seed(7)
        x = torch.rand(len(table), len(spec.windows), *(spec.input_size,) * 3, generator=g)
        rows = table.index[table.scan_id.isin(scans.scan_id)]
        key = f"{dataset}-{spec.hash}-" + "-".join(scans["scan_id"])
        return inputs.VolumeSource(x[rows], key=key), scans.reset_index(drop=True)
    for module in (inputs, runs_module, embed_module):
        monkeypatch.setattr(module, "volume_source", fake_source)
    return table, tmp_path / "runs", asked


def test_two_weight_files_never_share_a_run_or_a_feature_cache(world, tmp_path):
    table, root, asked = world
    refs = [ExternalRef("ctfm", publish_ctfm(tmp_path / name, seed)) for name, seed in (("a", 1), ("b", 2))]
    tables = [run_protocol("toyset", "ich", "linear", ref, TOY, run_root=root, progress=False) for ref in refs]
    assert all(spec == ctfm_spec(TOY) for spec in asked)  # the preset of the encoder, without being asked
    run_dirs = sorted(p.parent for p in root.rglob("done"))
    assert [d.relative_to(root).parts[1] for d in run_dirs] == sorted(r.identity for r in refs)
    config = json.loads((run_dirs[0] / "config.json").read_text())
    assert config["signature"]["encoder"].startswith("external:ctfm-")
    assert config["external_encoder"]["weights_sha256"] in {r.weights_sha256 for r in refs}
    assert config["spec"]["name"] == "ctfm"
    # one feature folder per encoder, holding what that encoder computes on the inputs
    folders = sorted(p.name for p in (root / "features").iterdir())
    assert folders == sorted(r.identity for r in refs)
    test_rows = table.index[table.split == "test"]
    x = torch.rand(len(table), 1, 16, 16, 16, generator=torch.Generator().manual_seed(7))[test_rows]
    for ref in refs:
        from safetensors.torch import load_file
        cached = [load_file(str(f))["tokens"] for f in (root / "features" / ref.identity).iterdir()]
        with torch.no_grad():
            expected = ref.build(TOY).eval().forward_features(x)
        assert any(c.shape == expected.shape and torch.allclose(c, expected, atol=1e-5) for c in cached), ref
    assert not np.allclose(tables[0]["probability"], tables[1]["probability"])
    # read back, not recomputed
    again = run_protocol("toyset", "ich", "linear", refs[0], TOY, run_root=root, progress=False)
    pd.testing.assert_frame_equal(again, tables[0], check_dtype=False)


def test_a_random_build_is_named_as_such_and_fine_tunes(world):
    _, root, _ = world
    ref = ExternalRef("ctfm", options=SMALL_CTFM, seed=3)
    with pytest.warns(UserWarning, match="randomly initialised: not CT-FM's weights"):
        predictions = run_protocol("toyset", "ich", "finetune", ref, TOY, run_root=root, progress=False)
    assert predictions["probability"].between(0, 1).all() and len(predictions) == 8
    run_dir = next(root.rglob("done")).parent
    assert run_dir.relative_to(root).parts[:2] == ("toy", ref.identity) and "random-s3" in ref.identity
    kept = next((root / "trained").rglob("model.safetensors"))
    assert ref.identity in str(kept)  # the fine-tuned classifier, kept under the same name


def test_a_preprocessing_that_is_not_the_encoders_is_refused(world):
    _, root, _ = world
    ref = ExternalRef("ctfm", options=SMALL_CTFM)
    with pytest.raises(ValueError, match=r"CT-FM \(ctfm-random-s0-\w+\) takes inputs of the 'ctfm' preprocessing "
                                         r".* not 'paper' .* pass spec=preset_spec\('ctfm', profile\)"):
        run_protocol("toyset", "ich", "linear", ref, TOY, spec=paper_spec(TOY), run_root=root, progress=False)
    with pytest.raises(ValueError, match="takes inputs of the 'paper' preprocessing"):
        embed("toyset", ExternalRef("resnet3d"), TOY, spec=ctfm_spec(TOY), progress=False)
    assert not list(root.rglob("done"))


def test_embeddings_of_an_external_encoder_are_its_global_token(world):
    table, _, asked = world
    ref = ExternalRef("ctfm", options=SMALL_CTFM)
    out = embed("toyset", ref, TOY, progress=False)
    assert asked[-1] == ctfm_spec(TOY) and len(out) == len(table)
    x = torch.rand(len(table), 1, 16, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = quiet(ref).eval()(x).numpy()
    np.testing.assert_allclose(out[[f"e{i}" for i in range(expected.shape[1])]].to_numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ one channel, cached
def test_the_one_channel_presets_go_through_the_cache_and_the_model_inputs(tmp_path, monkeypatch):
    """CT-FM's stack (cached float16, 1 × S³) and Merlin's HU canvas (cached int16) come out of ``volume_source``
    as (N, 1, S, S, S), equal to the whole chain run on each file (``preprocess``)."""
    from fmct_lib.data.cache import build_cache, read_index
    for var in ("FMCT_DATA", "FMCT_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    folder = tmp_path / "fmct_data" / "toyset"
    folder.mkdir(parents=True)
    g = np.meshgrid(*[np.arange(n) for n in (30, 28, 12)], indexing="ij")
    rows = []
    for i in range(3):
        r2 = ((g[0] - 14 - i) / 10) ** 2 + ((g[1] - 13) / 11) ** 2 + ((g[2] - 6) / 5) ** 2
        hu = np.where(r2 < 1, 40 + 1200 * (r2 > 0.7), -1024).astype(np.int16)
        nib.save(nib.Nifti1Image(hu, np.diag([-2.0, 2.0, 5.0, 1.0])), folder / f"scan{i}.nii.gz")
        rows.append({"scan_id": f"s{i}", "patient_id": f"p{i}", "path": f"scan{i}.nii.gz", "split": "test",
                     "manufacturer": "GE", "slice_thickness_mm": 5.0, "spacing": "2,2,5"})
    write_scans(pd.DataFrame(rows), "toyset")
    table = pd.DataFrame(rows)
    for spec in (ctfm_spec("toy"), merlin_spec("toy")):
        build_cache("toyset", spec, workers=1)
        assert len(read_index("toyset", spec)) == 3
        source, kept = inputs.volume_source("toyset", table, spec)
        x = next(source.batches(range(3), 3))
        assert x.shape == (3, 1, *(spec.input_size,) * 3) and x.dtype == torch.float32
        for i in range(3):
            expected = preprocess(folder / f"scan{i}.nii.gz", spec)
            atol = 1e-3 if spec.dtype == "float16" else 1e-6  # CT-FM's stack is stored as float16
            torch.testing.assert_close(x[i], expected, atol=atol, rtol=0)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
