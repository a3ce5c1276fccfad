"""Checkpoints: the authors' layouts (from the reference TSVs) and our safetensors format."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fmct_lib.models.checkpoints import (CheckpointError, load_checkpoint, load_reference_checkpoint,
                                         load_state_dict_file, read_checkpoint_config, save_checkpoint)
from fmct_lib.models.vit3d import vit_from_config

# key listings of the authors' layouts (names and shapes only; tests/assets/README.md says where from)
ASSETS = Path(__file__).resolve().parent / "assets"
TSV = ASSETS / "fmhct_vit_b_state_dict.tsv"
TSV_VARIANT = ASSETS / "fmhct_vit_b_state_dict_dino_yaml_variant.tsv"


def state_from_tsv(path: Path, seed: int = 0) -> dict:
    """Random tensors with exactly the keys and shapes the authors' encoder writes."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape = line.split("\t")
        shape = [int(s) for s in shape.strip("[]").split(",")]
        state[key] = torch.randn(*shape, generator=g) * 0.02
    for k in state:  # LayerNorm weights near one, so activations stay in a sane range
        if k.endswith(("norm.weight", "att_norm.weight", "ffn_norm.weight")):
            state[k] += 1.0
    return state


def reference_forward(state: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """An independent forward written from reference_code_facts.md §1, on the authors' key names."""
    w = state["patch_embedding.patch_embeddings.weight"]
    p = w.shape[-1]
    h = F.conv3d(x, w, state["patch_embedding.patch_embeddings.bias"], stride=p).flatten(2).transpose(1, 2)
    h = h + state["patch_embedding.position_embeddings"]
    prefix = [state["cls_token"].expand(x.shape[0], -1, -1)]
    if "register_tokens" in state:
        prefix.append(state["register_tokens"].expand(x.shape[0], -1, -1))
    h = torch.cat(prefix + [h], dim=1)
    B, T, C = h.shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for l in range(depth):
        b = lambda name: state.get(f"blocks.{l}.{name}")  # noqa: E731
        y = F.layer_norm(h, (C,), b("att_norm.weight"), b("att_norm.bias"), eps=1e-5)
        qkv = F.linear(y, b("attn.qkv.weight"), b("attn.qkv.bias"))
        q, k, v = qkv.split(C, dim=-1)
        split = lambda t: t.reshape(B, T, heads, C // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1) @ v
        h = h + F.linear(a.transpose(1, 2).reshape(B, T, C), b("attn.proj.weight"), b("attn.proj.bias"))
        y = F.layer_norm(h, (C,), b("ffn_norm.weight"), b("ffn_norm.bias"), eps=1e-5)
        y = F.linear(F.gelu(F.linear(y, b("mlp.linear1.weight"), b("mlp.linear1.bias"))),
                     b("mlp.linear2.weight"), b("mlp.linear2.bias"))
        h = h + y
    return F.layer_norm(h, (C,), state["norm.weight"], state["norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def released_state():
    return state_from_tsv(TSV)


def test_released_layout_loads_strictly_and_matches_independent_forward(released_state):
    assert len(released_state) == 138
    enc = load_reference_checkpoint(released_state).eval()
    assert enc.load_report.loaded == 138 and not enc.load_report.dropped
    assert enc.config.num_register_tokens == 0 and not enc.config.qkv_bias
    x = torch.rand(1, 3, 96, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = enc.forward_features(x)
        theirs = reference_forward(released_state, x, heads=12)
    assert ours.shape == (1, 513, 768)
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


def test_dino_checkpoint_with_prefixes_student_and_teacher(released_state, tmp_path):
    wrap = lambda s: {f"module.backbone.{k}": v for k, v in s.items()}  # noqa: E731
    head = {"module.head.mlp.0.weight": torch.zeros(8, 768), "module.head.last_layer.weight_g": torch.ones(16, 1)}
    teacher = {k: v + 0.01 for k, v in released_state.items()}
    ckpt = {"epoch": 3, "best_loss": 1.5, "state_dict": {**wrap(released_state), **head},
            "momentum_model_state_dict": {**wrap(teacher), **head}}
    path = tmp_path / "last_dino.pth"
    torch.save(ckpt, path)

    student = load_reference_checkpoint(path)
    assert sorted(student.load_report.dropped) == ["head.last_layer.weight_g", "head.mlp.0.weight"]
    plain = load_reference_checkpoint(released_state)
    for (k, a), b in zip(student.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    teacher_enc = load_reference_checkpoint(path, which="teacher")
    assert torch.equal(teacher_enc.cls_token, teacher["cls_token"])
    # torch.compile prefix on a bare dict
    compiled = load_reference_checkpoint({f"_orig_mod.{k}": v for k, v in released_state.items()})
    assert torch.equal(compiled.pos_embed, released_state["patch_embedding.position_embeddings"])


def test_the_official_dino_and_mae_wrappers_load_their_networks(released_state):
    """DINO's scripts save ``{"student", "teacher"}``, MAE's ``{"model"}``: each network is found by its name (the
    first was refused as "key 'teacher' holds a dict", and which='teacher' said there was no teacher)."""
    teacher = {k: v + 0.01 for k, v in released_state.items()}
    dino = {"student": {f"module.backbone.{k}": v for k, v in released_state.items()},
            "teacher": {f"backbone.{k}": v for k, v in teacher.items()}}
    assert torch.equal(load_reference_checkpoint(dino).cls_token, released_state["cls_token"])
    assert torch.equal(load_reference_checkpoint(dino, which="teacher").cls_token, teacher["cls_token"])
    assert torch.equal(load_reference_checkpoint({"model": released_state}).cls_token, released_state["cls_token"])
    with pytest.raises(CheckpointError, match=r"holds no teacher weights \(its networks: \['model'\]; the teacher's "
                                              r"would be under 'momentum_model_state_dict' or 'teacher'\)"):
        load_reference_checkpoint({"model": released_state}, which="teacher")


def test_integer_weights_and_another_patch_size_are_refused_saying_what_to_do(released_state):
    ints = dict(released_state, **{"blocks.0.attn.qkv.weight": released_state["blocks.0.attn.qkv.weight"].long()})
    with pytest.raises(CheckpointError, match="key 'blocks.0.attn.qkv.weight' holds torch.int64 values, not an "
                                              "encoder's floating-point weights"):
        load_reference_checkpoint(ints)  # a raw RuntimeError (a traceback on the command line) before
    patch16 = dict(released_state, **{"patch_embedding.patch_embeddings.weight": torch.zeros(768, 3, 16, 16, 16),
                                      "patch_embedding.position_embeddings": torch.zeros(1, 216, 768)})
    with pytest.raises(CheckpointError, match=r"patch kernel is \[16, 16, 16\], but ViT-B has patch 12; for another "
                                              r"patch size pass expect=\{'patch_size': 16\}"):
        load_reference_checkpoint(patch16)
    assert load_reference_checkpoint(patch16, expect={"patch_size": 16}).config.patch_size == 16
    with pytest.raises(CheckpointError, match=r"but patch_size=12 was given"):  # what the caller did give
        load_reference_checkpoint(patch16, expect=None, patch_size=12)
    flat = dict(released_state, **{"patch_embedding.patch_embeddings.weight": torch.zeros(768, 3, 16, 16)})
    for expect in ({"patch_size": 16}, None):  # a 2-D ViT: the advice to pass patch 16 cannot make it load (an audit)
        with pytest.raises(CheckpointError, match=r"patch kernel is \[16, 16\], a 2-D encoder's; FM-CT's is 3-D"):
            load_reference_checkpoint(flat, expect=expect)


def test_one_of_our_files_carries_a_load_report_too(tmp_path, monkeypatch):
    from fmct_lib.models.checkpoints import load_encoder, save_checkpoint
    from fmct_lib.models.vit3d import vit_from_config
    from fmct_lib.config import get_profile
    model = get_profile("toy").model
    path = save_checkpoint(tmp_path / "ours.safetensors", vit_from_config(model), {"model": model.to_dict(),
                                                                                  "method": "mae"})
    report = load_encoder(path).load_report
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_encoder("~/ours.safetensors").load_report.source == report.source  # ~ is the home folder
    assert str(report).startswith(f"{path} [mae]: loaded {len(vit_from_config(model).state_dict())} encoder "
                                  f"tensors strictly (width 48, depth 2, heads 2")


def test_yaml_variant_detects_registers_and_qkv_bias():
    state = state_from_tsv(TSV_VARIANT)
    assert len(state) == 151
    enc = load_reference_checkpoint({f"module.{k}": v for k, v in state.items()})
    assert enc.config.num_register_tokens == 4 and enc.config.qkv_bias
    assert sum(t.numel() for t in enc.parameters()) == 89_435_136
    x = torch.rand(1, 3, 96, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), reference_forward(state, x, heads=12),
                                   atol=2e-4, rtol=1e-4)


def test_mae_checkpoint_drops_decoder(released_state):
    extra = {"module.decoder_embed.weight": torch.zeros(4, 4), "module.mask_token": torch.zeros(1, 1, 4),
             "module.decoder_pos_embed": torch.zeros(1, 4, 4)}
    enc = load_reference_checkpoint({"state_dict": {**{f"module.{k}": v for k, v in released_state.items()},
                                                    **extra}, "momentum_model_state_dict": None})
    assert len(enc.load_report.dropped) == 3
    with pytest.raises(CheckpointError, match="no teacher weights"):
        load_reference_checkpoint({"state_dict": released_state, "momentum_model_state_dict": None},
                                  which="teacher")


def test_unexpected_and_missing_keys_are_reported(released_state):
    bad = dict(released_state, **{"blocks.0.attn.lora_q.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match=r"unexpected \['blocks.0.attn.lora_q.weight'\]"):
        load_reference_checkpoint(bad)
    partial = {k: v for k, v in released_state.items() if k != "norm.bias"}
    with pytest.raises(CheckpointError, match=r"missing \['norm.bias'\]"):
        load_reference_checkpoint(partial)
    with pytest.raises(CheckpointError, match="patch_size=16"):
        load_reference_checkpoint(released_state, expect=None, patch_size=16)


def test_our_format_round_trip_is_atomic(tmp_path):
    enc = vit_from_config(dict(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2))
    config = {"model": enc.config.to_dict(), "method": "dino", "note": "ü"}
    path = save_checkpoint(tmp_path / "enc.safetensors", enc, config, metadata={"step": 7})
    assert [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]  # no temp file left
    assert read_checkpoint_config(path) == config
    loaded, cfg = load_checkpoint(path)
    for (k, a), b in zip(enc.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 16, 16, 16)
    torch.testing.assert_close(enc.eval()(x), loaded.eval()(x))


def test_the_same_weights_and_configuration_give_the_same_bytes(tmp_path):
    """An audit: safetensors writes its metadata in a hash map's order, which changes from call to call (6 orders
    in 12 saves, measured), so a resumed pretraining's encoder, equal tensor for tensor, had another sha256 half
    the time, and the runs, feature caches and figures keyed by it were made again. The keys are now sorted."""
    import hashlib

    from safetensors import safe_open
    enc = vit_from_config(dict(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2))
    config = {"model": enc.config.to_dict(), "method": "dino", "note": "ü \"q\" \\"}
    digests = set()
    for i in range(12):
        path = save_checkpoint(tmp_path / f"enc{i}.safetensors", enc, config, metadata={"exported": ["student"],
                                                                                      "step": 7, "zz": "é"})
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(path), "pt") as f:  # safetensors still reads it: the metadata and the tensors as written
        assert f.metadata() == {"fmct_config": json.dumps(config, sort_keys=True), "exported": '["student"]',
                                "step": "7", "zz": "é"}
    assert read_checkpoint_config(path) == config
    for (k, a), b in zip(enc.state_dict().items(), load_checkpoint(path)[0].state_dict().values()):
        assert torch.equal(a, b), k


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"cls_token": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused.*execute code"):
        load_state_dict_file(path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_reference_checkpoint(path)


def test_missing_file_and_foreign_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_reference_checkpoint(tmp_path / "nope.pth")
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not an fmct checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")


@pytest.mark.parametrize("header_length", [640, 896, 1152, 1408])
def test_a_safetensors_header_whose_length_reads_like_a_pickle_stream_is_safetensors(tmp_path, header_length):
    """A safetensors file starts with its header's length (8 bytes, little-endian): 640 = 0x280 is b"\\x80\\x02…",
    a pickle stream's first two bytes. It must still read as safetensors (a kept classifier once did not)."""
    import json as _json
    import struct

    from safetensors.torch import load_file

    from fmct_lib.models.checkpoints import checkpoint_format
    body = _json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"pad": ""}})
    body = body.replace('"pad": ""', '"pad": "' + "x" * (header_length - len(body)) + '"')
    assert len(body) == header_length
    path = tmp_path / "kept.safetensors"
    path.write_bytes(struct.pack("<Q", header_length) + body.encode() + struct.pack("<f", 1.5))
    assert path.read_bytes()[:1] == b"\x80" and checkpoint_format(path) == "safetensors"
    assert load_file(str(path))["a"].item() == 1.5
    # the legacy torch.save stream (a real pickle) and the zip format are still told apart
    torch.save({"w": torch.zeros(1)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"w": torch.zeros(1)}, tmp_path / "zip.pth")
    assert checkpoint_format(tmp_path / "legacy.pth") == "pickle" and checkpoint_format(tmp_path / "zip.pth") == "torch"
    path.write_bytes(struct.pack("<Q", header_length + 60) + b"{" + b"x" * 10)  # cut short
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint_format(path)


def test_a_file_without_its_last_block_is_refused_unless_another_architecture_is_asked_for(released_state):
    """The authors released ViT-B alone: by default the loader expects it, so a file that lost a block is refused
    rather than loaded as an 11-block encoder; ``expect=None`` loads what the keys tell, on request."""
    shallow = {k: v for k, v in released_state.items() if not k.startswith("blocks.11.")}
    with pytest.raises(CheckpointError, match=r"<state dict>: is not ViT-B: depth 11 \(expected 12\)"):
        load_reference_checkpoint(shallow)
    assert load_reference_checkpoint(shallow, expect=None).config.depth == 11
    # an argument the expected architecture contradicts is an error, not silently overridden
    with pytest.raises(ValueError, match=r"patch_size=16 \(expected 12\) contradicts ViT-B; pass expect=None"):
        load_reference_checkpoint(released_state, patch_size=16)


def test_a_teacher_asked_of_a_bare_state_dict_is_an_error(released_state, tmp_path):
    """A bare state dict is one network; ``which="teacher"`` once returned it as if it were the teacher."""
    from fmct_lib.models.checkpoints import load_encoder
    with pytest.raises(CheckpointError, match="<state dict>: a bare state dict .* no teacher weights"):
        load_reference_checkpoint(released_state, which="teacher")
    torch.save(released_state, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="bare.pth: a bare state dict"):
        load_encoder(tmp_path / "bare.pth", which="teacher")
    assert load_encoder(tmp_path / "bare.pth").load_report.which == "student"
    with pytest.raises(ValueError, match="which must be 'student' or 'teacher'"):
        load_reference_checkpoint(released_state, which="ema")


def test_a_study_of_the_authors_weights_on_the_paper_chain_warns_and_on_theirs_does_not(released_state, tmp_path,
                                                                                        monkeypatch):
    import warnings
    import pandas as pd
    from fmct_lib import pipeline
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: pd.DataFrame({"scan_id": ["a"]}))
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset: None)
    path = tmp_path / "model_weights.pth"
    torch.save(released_state, path)
    with pytest.warns(UserWarning, match=r"in the authors' layout.*preset 'reference' \(-p preset reference, "
                                         r"--preset reference\)"):
        study = pipeline.start("rsna", "paper", checkpoint=str(path))
    assert study.method == "dino"  # the authors' file records none: the profile's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.start("rsna", "paper", checkpoint=str(path), preset="reference")
    monkeypatch.chdir(tmp_path)  # a path relative to the working folder is recorded as the file it names (an audit:
    relative = pipeline.start("rsna", "paper", checkpoint="model_weights.pth", preset="reference")  # as typed)
    assert relative.checkpoint == path and relative.checkpoint.is_absolute()
    # an authors' MAE checkpoint (its decoder beside the encoder) is labelled MAE, and no other method (an audit: it
    # was labelled with the profile's DINO, and -p method vicreg was taken as given)
    mae = tmp_path / "mae_checkpoint.pth"
    torch.save({**released_state, "decoder_embed.weight": torch.zeros(512, 768), "mask_token": torch.zeros(1, 1, 512)},
               mae)
    assert pipeline.start("rsna", "paper", checkpoint=str(mae), preset="reference").method == "mae"
    with pytest.raises(ValueError, match="mae_checkpoint.pth was pretrained with 'mae', not method 'vicreg'"):
        pipeline.start("rsna", "paper", checkpoint=str(mae), preset="reference", method="vicreg")
    assert pipeline.start("rsna", "paper", checkpoint=str(path), preset="reference", method="mae").method == "mae"


def test_the_command_line_warns_of_a_chain_the_weights_were_not_trained_on(released_state, tmp_path, capsys):
    """``fmct embed`` and ``fmct finetune`` (``options.warn_of_chain``) warn as the notebooks do, in one line (an
    audit: the authors' weights ran on the paper chain without a word; ours on the reference chain too)."""
    import sys
    import warnings
    from fmct_lib.cli import report_errors
    from fmct_lib.cli.options import warn_of_chain
    from fmct_lib.data.preprocess import paper_spec, reference_spec
    from fmct_lib.models.checkpoints import save_checkpoint
    from fmct_lib.config import get_profile
    from fmct_lib.models.vit3d import vit_from_config
    authors = tmp_path / "model_weights.pth"
    torch.save(released_state, authors)
    ours = save_checkpoint(tmp_path / "ours.safetensors", vit_from_config(get_profile("toy").model),
                           config={"method": "dino", "preprocess": paper_spec("toy").to_dict()})
    cases = {(authors, "paper"): "in the authors' layout", (authors, "reference"): None,
             (ours, "paper"): None, (ours, "reference"): "pretrained on the 'paper' preprocessing chain"}
    for (encoder, chain), said in cases.items():
        spec = paper_spec("paper") if chain == "paper" else reference_spec("paper")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warn_of_chain(str(encoder), spec)
        assert [str(w.message) for w in caught if said and said in str(w.message)] or not said, (encoder, chain)
        assert said or not caught, (encoder, chain)
    import os
    with warnings.catch_warnings(record=True) as caught:  # --encoder=~/x reaches the command unexpanded (a review)
        warnings.simplefilter("always")
        os.environ["HOME"], home = str(tmp_path), os.environ.get("HOME", "")
        try:
            warn_of_chain("~/ours.safetensors", reference_spec("paper"))
        finally:
            os.environ["HOME"] = home
    assert any("pretrained on the 'paper' preprocessing chain" in str(w.message) for w in caught)
    with warnings.catch_warnings():  # as a command prints it (Python's printer, not pytest's recorder): one line
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        assert report_errors("fmct embed", lambda: warn_of_chain(str(authors), paper_spec("paper"))) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"fmct embed: warning: checkpoint {authors} is in the authors' layout") and err.count("\n") == 1

