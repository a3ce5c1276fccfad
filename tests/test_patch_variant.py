"""The patch-size variant of a profile (config.patch_variant; Supplementary Fig. 2): the paper's 512 against 216
tokens mirrored at every profile, a name of its own that resolves everywhere a run names its profile, and the
profiles themselves unchanged."""
from __future__ import annotations

import dataclasses

import pytest

from fmct_lib.config import PROFILES, get_profile, patch_variant
from fmct_lib.report import paper


def _patch_tokens(profile) -> int:
    return (profile.input_size // profile.patch_size) ** 3


@pytest.mark.parametrize("name, patch, input_size, local", [("paper", 16, 96, 96), ("demo", 11, 33, 22),
                                                            ("toy", 6, 18, 18)])
def test_the_default_variant_has_the_papers_token_ratio(name, patch, input_size, local):
    base = get_profile(name)
    variant = patch_variant(base)
    assert (variant.name, variant.patch_size, variant.input_size, variant.local_input_size) == (
        f"{name}-p{patch}", patch, input_size, local)
    tokens = paper.paper_values_for("supp_fig2", metric="n_tokens").set_index("model")["value"]
    assert _patch_tokens(variant) / _patch_tokens(base) == tokens["fmct_p16"] / tokens["fmct"]   # 216 / 512
    assert variant.local_input_size % patch == 0 and variant.input_size % patch == 0
    assert variant.input_size >= base.input_size                     # never fewer voxels for the coarser patches
    changed = {f.name for f in dataclasses.fields(base) if getattr(base, f.name) != getattr(variant, f.name)}
    assert changed <= {"name", "model", "local_input_size"}
    assert dataclasses.replace(variant.model, img_size=base.input_size, patch_size=base.patch_size) == base.model


def test_a_variant_resolves_by_its_name_as_runs_record_it():
    """Runs record the profile's name (pretraining folders, downstream signatures): it must resolve to the variant."""
    from fmct_lib.data.preprocess import paper_spec
    from fmct_lib.downstream.training import HParams
    assert get_profile("demo-p11") == patch_variant("demo")
    assert get_profile("demo-p16") == patch_variant("demo", 16) and get_profile("demo-p16").input_size == 32
    assert HParams.from_profile("demo-p11") == HParams.from_profile("demo")
    assert paper_spec("demo-p11").input_size == 33 and paper_spec("demo-p11").hash != paper_spec("demo").hash
    assert paper_spec("demo-p16").hash == paper_spec("demo").hash     # same input: the same cache
    assert patch_variant("demo", 8) is PROFILES["demo"]
    for bad in ("demo-p", "nope-p8", "demo-p11-x"):
        with pytest.raises(ValueError, match="unknown profile"):
            get_profile(bad)
    with pytest.raises(ValueError, match="positive whole number"):
        patch_variant("demo", 0)


def test_the_profiles_keep_their_values():
    assert [(p.name, p.input_size, p.patch_size, p.local_input_size) for p in PROFILES.values()] == [
        ("paper", 96, 12, 96), ("demo", 32, 8, 16), ("toy", 16, 4, 16)]


def test_the_comparison_of_12_takes_a_coarser_patch_only():
    """12_patch_size compares the profile's encoder with a coarser one (Supp. Fig. 2: 216 against 512 tokens); a
    patch giving as many tokens or more (toy: patch 4 is the profile's, 3 gives 6³ > 4³) is refused, where the
    finer encoder was reported as the paper's coarser p16 model."""
    from fmct_lib.config import coarser_variant
    assert coarser_variant("toy") == patch_variant("toy") and coarser_variant("demo", 16) == patch_variant("demo", 16)
    for patch, tokens in ((4, 4), (3, 6), (2, 8)):
        with pytest.raises(ValueError, match=rf"patch_size {patch} gives {tokens}³ patch tokens against the "
                                             r"profile's 4³ \(patch 4\): the comparison needs a coarser patch"):
            coarser_variant("toy", patch)
