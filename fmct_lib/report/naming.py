"""Where a notebook's figure goes and which of the paper's cohorts it is drawn beside.

The committed gallery (``figures/``) holds the synthetic cohort at the ``demo`` profile; a run on other data
or at another size writes figures of its own name, so it never overwrites the gallery. Where figures go is
``paths.figures_root()``: ``<runs root>/figures/`` unless ``$FMCT_FIGURES`` says otherwise, which only
``make reproduce`` on the demo profile does (naming the gallery), so a run on your own data never adds to it.
"""
from __future__ import annotations

import hashlib
import json

from ..config import PROFILES, Profile, get_profile

__all__ = ["figure_name", "paper_dataset"]

# Which of the paper's cohorts a site of ours stands in for, when drawing the paper's values beside ours.
# The synthetic internal site plays NYU Langone (pretraining institution, fine-tuning, held-out test) and the
# external site NYU Long Island (another hospital: external validation and in-domain fine-tuning).
_PAPER_COUNTERPART = {("synthetic", "internal"): "nyu_langone", ("synthetic", "external"): "nyu_long_island"}


def paper_dataset(dataset: str, site: str | None = None) -> str:
    """The paper's cohort that ``dataset`` (and ``site``) corresponds to, for drawing the paper's values."""
    return _PAPER_COUNTERPART.get((dataset, site), dataset)


def figure_name(base: str, dataset: str, profile: str | Profile, tag: str | None = None) -> str:
    """``base`` for the committed gallery (synthetic cohort, ``demo`` profile), else ``base__<dataset>_<profile>``,
    so a run on other data or at another size never overwrites the gallery's figures; a profile changed from
    its namesake (``Profile.replace``) adds ``_<hash of the changes>`` to ``base``. ``tag`` names what else sets
    a run apart (``Study.figure_name``: a checkpoint's file and sha256, a preprocessing other than the paper's,
    another method, site or seed), added as ``_<tag>``: two encoders or settings compared on the same data keep
    a figure each."""
    p = get_profile(profile)
    named = PROFILES.get(p.name)
    if named is not None and p != named:
        changed = {k: v for k, v in p.to_dict().items() if named.to_dict().get(k) != v}
        base = f"{base}_{hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:6]}"
    if tag:
        return f"{base}__{dataset}_{p.name}_{tag}"
    return base if (dataset, p.name) == ("synthetic", "demo") else f"{base}__{dataset}_{p.name}"
