"""The pipeline: the one place that builds a missing stage, and the set-up every notebook starts with.

A stage is a dataset's scan table (the synthetic cohort is generated; any other dataset is ingested by the
user), its preprocessing cache, a pretrained encoder and a fine-tuned classifier. ``ensure_*`` returns the
stage, building it only when it is missing (each builder resumes), so any notebook runs alone and
``make reproduce`` runs them in order without recomputing. Everything below this module only reads a stage
and, where it is missing, raises ``StageMissing`` naming the command that builds it.

``start`` is a notebook's first cell: it returns a :class:`Study` (dataset, profile, scan table, runs root,
seed, pretraining method, site, preprocessing, encoder checkpoint) whose methods are the calls the notebooks
share, each with the study's preprocessing: the ``paper`` chain, or the authors' ``reference`` chain for their
released weights (given as ``checkpoint``).

Other foundation models (Fig. 1f, Extended Data Figs 3-4) enter a study as ``Study.external(name, weights)``, a
``models.external.ExternalRef`` whose preprocessing cache it builds; the study's runs and embeddings read each
external encoder's inputs from its own preset, and ``Study.sweep_models`` runs several (encoder, protocol)
pairs as one table.

A pretrained encoder starts from the released one (``encoders/``, ``train/release.py``) where there is one,
unless pretraining afresh is asked for: ``afresh=True`` or the environment variable ``FMCT_PRETRAIN=1``
(``make reproduce PRETRAIN=1``). Pretraining runs on the paper chain only: the ``reference`` preset is offered
for an encoder given as a checkpoint (the authors' weights), not for pretraining.
"""
from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .config import PROFILES, Profile, get_profile, is_whole_number
from .data.manifest import is_available, load_scans, paper_tasks, scan_table_path
from .paths import figures_root, in_checkout, runs_root

if TYPE_CHECKING:
    from .data.preprocess import PreprocessSpec
    from .models.external import ExternalRef

__all__ = ["Study", "start", "ensure_dataset", "ensure_cache", "ensure_pretrained", "ensure_finetuned",
           "choose_tasks", "pretrain_afresh", "check_choices", "encoder_protocols", "check_scan_id"]

PRETRAIN_ENV = "FMCT_PRETRAIN"
DEFAULT_SITE = "internal"  # the site the notebooks train and test on by default (the gallery's)


@dataclass(frozen=True)
class Study:
    """What a notebook works on: ``dataset`` at ``profile`` with its scan table ``scans``, runs under ``runs``,
    seed ``seed``, the pretraining ``method``, ``site_filter`` (``{"site": site}`` where the scan table has
    sites, else None) selecting the labelled rows it trains and tests on, ``afresh``: pretrain the encoders
    afresh instead of starting from the released ones, ``spec``: the preprocessing every run, embedding and
    attention map of the study reads (default: the profile's paper chain), and ``checkpoint``: the encoder file
    the study starts from instead of a pretrained one (needed by any chain but the paper's)."""

    dataset: str
    profile: Profile
    scans: pd.DataFrame
    runs: Path
    seed: int
    method: str
    site_filter: dict | None
    afresh: bool = False
    spec: PreprocessSpec | None = None
    checkpoint: Path | None = None

    def __post_init__(self):
        from .data.preprocess import paper_spec
        if self.spec is None:
            object.__setattr__(self, "spec", paper_spec(self.profile))
        _require_checkpoint_for(self.spec.name, self.checkpoint)

    @property
    def labelled(self) -> pd.DataFrame:
        """The rows of the study's site (all rows without sites)."""
        if self.site_filter is None:
            return self.scans
        return self.scans[self.scans["site"] == self.site_filter["site"]]

    @property
    def figures(self) -> Path:
        """Where the study's figures go: ``$FMCT_FIGURES``, else ``<runs>/figures`` of the study's runs root (a
        ``run_dir``'s figures stay beside its runs)."""
        return figures_root(self.runs)

    @functools.cached_property  # hashed once per study, however many figures it names
    def encoder_tag(self) -> str | None:
        """What names the study's encoder in its figures when it starts from a ``checkpoint``: the file's name and
        the first 8 hex digits of its sha256, and the preset where it is not the paper's (``model-1a2b3c4d-reference``);
        None for the encoders this library pretrains or releases."""
        if self.checkpoint is None:
            return None
        from .train.release import sha256_of
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.checkpoint.name.split(".")[0])[:40]
        preset = "" if self.spec.name == "paper" else f"-{self.spec.name}"
        return f"{stem}-{sha256_of(self.checkpoint)[:8]}{preset}"

    def settings_tag(self, site: bool = True, method: bool = True) -> str | None:
        """What names the study's settings in its figures where they are not a notebook's defaults: the
        pretraining method where it is not the profile's (a checkpoint's is named by ``encoder_tag``), a site other
        than ``internal`` (``site-all`` where a table with sites is read whole: ``site=None``), a seed other than 0
        (``mae_site-external_seed1``); None with the defaults (03, which chooses its sites itself, names them in its
        ``figure_name`` call); ``site=False`` for a figure that reads every site whatever the study's,
        ``method=False`` for one whose name holds the method already (01's)."""
        chosen = DEFAULT_SITE
        if site and self.site_filter:
            chosen = self.site_filter["site"]
        elif site and "site" in self.scans:
            chosen = "all"
        other_method = method and self.checkpoint is None and self.method != self.profile.pretrain_method
        named = [self.method if other_method else "",
                 f"site-{chosen}" if chosen != DEFAULT_SITE else "", f"seed{self.seed}" if self.seed else ""]
        return "_".join(n for n in named if n) or None

    def figure_name(self, base: str, *settings: str, site: bool = True, method: bool = True) -> str:
        """``naming.figure_name`` of the study's dataset, profile, ``encoder_tag``, ``settings_tag`` and a
        notebook's own ``settings`` that differ from its defaults (empty ones are left out): a study started from a
        checkpoint, on the reference chain or with other settings never overwrites another's figures, nor the
        gallery's."""
        from .report.naming import figure_name
        tag = "_".join(t for t in (self.encoder_tag, self.settings_tag(site, method), *settings) if t)
        return figure_name(base, self.dataset, self.profile, tag or None)

    def tasks(self, tasks: list[str] | None = None, rows: pd.DataFrame | None = None, split: str = "test") -> list[str]:
        """``choose_tasks`` on ``rows`` (default: the labelled rows). A task asked for that is not a label column of
        the study's scan table is refused first (``interpret.parts.check_tasks``: a ``ValueError`` naming the
        dataset's tasks and the one meant), not reported as a task without positives."""
        if tasks is not None:  # [] is refused, not read as the default (candidate_tasks)
            from .interpret.parts import candidate_tasks
            tasks = candidate_tasks(self.dataset, tasks, self.scans)
        return choose_tasks(self.labelled if rows is None else rows, tasks, self.dataset, self.profile, split)

    def encoder(self, method: str | None = None, fraction: float = 1.0) -> Path:
        """The encoder to start from: the study's ``checkpoint`` when it has one, else the pretrained encoder of
        ``method`` (default: the study's) and ``fraction`` (``ensure_pretrained``)."""
        return ensure_pretrained(method or self.method, self.dataset, self.profile, fraction=fraction, seed=self.seed,
                                 checkpoint=self.checkpoint, runs=self.runs, afresh=self.afresh)

    def finetuned(self, task: str, encoder: Path) -> Path:
        """The encoder of the study's fine-tuned classifier on ``task`` (``ensure_finetuned``)."""
        return ensure_finetuned(self.dataset, task, encoder, self.profile, self.site_filter, self.seed, runs=self.runs,
                                spec=self.spec)

    def other(self, dataset: str) -> pd.DataFrame:
        """The scan table of another dataset the study evaluates on, with the cache of its chain built."""
        scans = ensure_dataset(dataset, self.profile)
        ensure_cache(dataset, self.profile, self.spec.name)
        return scans

    def external(self, name: str, weights=None, **options) -> ExternalRef:
        """The external encoder ``name`` (``models.external.ENCODERS``) with its local ``weights`` (None: randomly
        initialised from the study's seed, at the profile's size, ``SMALL_ARCHITECTURES``, unless ``options`` set
        the architecture), with the cache of its preprocessing preset built for the study's evaluated scans (an
        external encoder is never pretrained here, so the unlabelled pool, split ``pretrain``, is left out)."""
        from .models.external import SMALL_ARCHITECTURES, ExternalRef
        if weights is None and not options:
            options = SMALL_ARCHITECTURES.get(self.profile.name, {}).get(name, {})
        ref = ExternalRef(name, None if weights is None else str(weights), options, seed=self.seed)
        evaluated = self.scans.loc[self.scans["split"] != "pretrain", "scan_id"].tolist()
        ensure_cache(self.dataset, self.profile, ref.preset, scans=evaluated)
        return ref

    def spec_for(self, encoder) -> PreprocessSpec:
        """The preprocessing of ``encoder``'s inputs: an external encoder's own preset, else the study's."""
        from .models.external import ExternalRef
        return encoder.spec(self.profile) if isinstance(encoder, ExternalRef) else self.spec

    def embed(self, encoder, **kwargs) -> pd.DataFrame:
        """``downstream.embed`` of the study's dataset, profile and the encoder's preprocessing (``spec_for``;
        ``kwargs``: ``scans`` …)."""
        from .downstream import embed
        return embed(self.dataset, encoder, self.profile, spec=self.spec_for(encoder), **kwargs)

    def sweep(self, tasks, protocols, encoder, **kwargs) -> pd.DataFrame:
        """``run_sweep`` on the study's dataset, profile, seed, site, runs root and the encoder's preprocessing
        (``kwargs`` override them: ``dataset``, ``train_filter``, ``eval_filter``, ``n_seeds`` …)."""
        from .downstream import run_sweep
        return run_sweep(tasks=tasks, protocols=protocols, encoder=encoder, **self._run_args(encoder, kwargs))

    def fewshot(self, tasks, protocol, encoder, **kwargs) -> pd.DataFrame:
        """``fewshot_sweep`` with the study's settings, as ``sweep``."""
        from .downstream import fewshot_sweep
        return fewshot_sweep(tasks=tasks, protocol=protocol, encoder=encoder, **self._run_args(encoder, kwargs))

    def sweep_models(self, models: dict, tasks, **kwargs) -> pd.DataFrame:
        """``sweep`` of each model of ``models`` (label → (encoder, protocol)) as one table, the label in a column
        ``model``; the runs every sweep skipped are in ``attrs["skipped"]``, with their model."""
        tables, skipped = [], []
        for label, (encoder, protocol) in models.items():
            table = self.sweep(tasks, [protocol], encoder, **kwargs)
            skipped += [{**run, "model": label} for run in table.attrs.get("skipped", [])]
            if len(table):
                tables.append(table.assign(model=label))
        result = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        result.attrs["skipped"] = skipped
        return result

    def _run_args(self, encoder, overrides: dict) -> dict:
        return {"dataset": self.dataset, "profile": self.profile, "seed": self.seed, "train_filter": self.site_filter,
                "run_root": self.runs / "downstream", "spec": self.spec_for(encoder), **overrides}


def start(dataset: str, profile: str | Profile, *, run_dir: str | None = None, seed: int = 0,
          method: str | None = None, site: str | None = None, afresh: bool | None = None, preset: str = "paper",
          checkpoint: str | None = None) -> Study:
    """A notebook's first cell: the dataset (generated for ``synthetic``, else stopping with the ingest command
    when it has not been ingested) and its cache of the ``preset`` chain, as a :class:`Study`. ``run_dir`` is the
    runs root (default ``$FMCT_RUNS`` or ``runs/``); ``method`` defaults to the profile's (an unknown one is a
    ``ValueError`` naming the known ones); ``site`` restricts training and testing to one labelled site where the
    table has sites (one it lacks is a ``ValueError`` naming those it has); ``afresh`` pretrains the encoders
    instead of starting from the released ones (default: ``pretrain_afresh()``, the environment variable
    ``FMCT_PRETRAIN``); ``checkpoint`` is an encoder file to start from instead (ours or the authors' ``.pth``);
    the pretraining method ours records is the study's (another ``method`` beside it is a ``ValueError``).

    ``preset`` is the preprocessing of every run, embedding and attention map: ``paper`` (default) or the
    authors' ``reference`` chain, which is for their released weights and so needs ``checkpoint``; pretraining
    with the reference chain is not offered (a ``ValueError`` says so before anything is built)."""
    from .data.preprocess import preset_spec
    from .train.methods import get_method
    seed = check_seed(seed)
    p = get_profile(profile)
    spec = preset_spec(preset, p)
    get_method(method or p.pretrain_method)  # an unknown method fails here, before anything is built
    _require_checkpoint_for(preset, checkpoint)
    if checkpoint:
        checkpoint = _existing_checkpoint(checkpoint)
        from .models.checkpoints import authors_method, chain_warning
        config, report = _fitting_checkpoint(checkpoint, p, spec)
        if (said := chain_warning(checkpoint, config, spec)) is not None:
            warnings.warn(said, stacklevel=2)
        recorded = config.get("method") if config is not None else authors_method(report)
        if method and recorded and method != recorded:  # the figures would name a method the encoder never had
            raise ValueError(f"checkpoint {checkpoint} was pretrained with {recorded!r}, not method {method!r}: leave "
                             f"method unset (None) to take the checkpoint's, or pass the {method} encoder's file")
        method = method or recorded
    scans = ensure_dataset(dataset, p)
    ensure_cache(dataset, p, preset)
    runs = Path(run_dir).expanduser().resolve() if run_dir else runs_root()
    site_filter = _site_filter(dataset, scans, site)
    afresh = pretrain_afresh() if afresh is None else bool(afresh)
    return Study(dataset, p, scans, runs, seed, method or p.pretrain_method, site_filter, afresh, spec, checkpoint)


def encoder_protocols() -> tuple[str, ...]:
    """The ways a notebook trains a pretrained encoder's classifier when it compares encoders (05, 09, 10, 12):
    every registered protocol that starts from one (``downstream.protocols.PROTOCOLS``; a protocol added there is
    one here too, docs/extending.md)."""
    from .downstream.protocols import PROTOCOLS
    return tuple(name for name, protocol in PROTOCOLS.items() if protocol.needs_encoder)


def count(name: str, value, default: int) -> int:
    """A notebook's count parameter (``n_seeds``, ``resamples``): ``default`` (the profile's) for None, else a whole
    number of at least 1; 0, a negative or a fraction is refused in one line naming the parameter (0 used to mean
    the default in silence, a negative to train nothing)."""
    if value is None:
        return default
    if not is_whole_number(value):
        raise ValueError(f"{name} {value!r}: a whole number of at least 1, or None for the profile's ({default})")
    return int(value)


def check_seed(seed) -> int:
    """A notebook's ``seed``: a whole number of at least 0, refused in one line before any work (-1 ran to the end,
    1.5 failed in the training loop after its run folder was made)."""
    if not is_whole_number(seed, least=0):
        raise ValueError(f"seed {seed!r}: a whole number of at least 0")
    return int(seed)


def check_scan_id(name: str, scan_id, scans: pd.DataFrame) -> str | None:
    """A notebook's scan parameter (00's ``example_scan``): None, or a ``scan_id`` of ``scans``, refused in one line
    naming the parameter and the closest ids before any work (a typo failed with a pandas KeyError after the
    cohort's figure was written)."""
    if scan_id is None:
        return None
    ids = scans["scan_id"].astype(str)
    if str(scan_id) not in set(ids):
        import difflib
        close = difflib.get_close_matches(str(scan_id), ids.tolist(), n=3)
        raise ValueError(f"{name} {scan_id!r}: no scan of the dataset has that id"
                         + (f"; close: {', '.join(close)}" if close else
                            f" (its ids look like {ids.iloc[0]!r})" if len(ids) else " (it has no scans)"))
    return str(scan_id)


def flag(name: str, value) -> bool:
    """A notebook's yes/no parameter (``patient_disjoint``, ``compare_scratch``): True or False; anything else is
    refused in one line naming the parameter (``-r patient_disjoint no`` used to read as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} {value!r}: True or False (papermill: -p {name} True)")
    return bool(value)


def fraction(name: str, value) -> float:
    """A notebook's share of the pretraining pool (01's ``fraction``): a number in (0, 1], refused in one line
    before any work (a string failed in a format code, 0 after the cache was built)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"{name} {value!r}: a share of the pretraining pool in (0, 1], e.g. 0.1, 0.3 or 1.0")
    return float(value)


def check_encoders(encoders, known=None) -> dict[str, str | None]:
    """09's and 10's ``encoders``: {name: its local weights file or folder, or None for a random initialisation},
    each name one of ``known`` (default: ``models.external.ENCODERS``) and each file there; refused in one line
    before any work (a typo, a list or a missing file failed after FM-CT had pretrained and the caches were built;
    10 ran an encoder it does not know of, randomly initialised, in silence). ``{}``: FM-CT alone (09)."""
    from .models.external import ENCODERS
    known = list(known or ENCODERS)
    if not isinstance(encoders, dict):
        raise ValueError(f"encoders {encoders!r}: a mapping of encoder name to its weights (a local file or folder, "
                         f"or None), e.g. {{{known[0]!r}: None}}; the encoders: {', '.join(known)}")
    for name, weights in encoders.items():
        if name not in known:
            raise ValueError(f"encoders: {name!r} is not an external encoder here; choose from {', '.join(known)}")
        if weights is not None and not Path(weights).expanduser().exists():
            raise FileNotFoundError(f"encoders: the weights of {name!r}, {weights}, do not exist")
    return dict(encoders)


def check_protocols(protocols) -> list[str]:
    """A notebook's ``protocols`` (one name or a list) as a list: at least one, each once, each a registered way to
    train a classifier (``downstream.protocols.PROTOCOLS``; K-shot runs are 04's). Refused in one line before any
    work: one name used to be read letter by letter, ``[]`` failed after the encoder was built, a name given twice
    drew its bars twice."""
    from .downstream.protocols import PROTOCOLS
    listed = [protocols] if isinstance(protocols, str) else list(protocols or [])
    known = ", ".join(PROTOCOLS)
    if not listed:
        raise ValueError(f"protocols {protocols!r}: name at least one of {known}")
    unknown = [p for p in listed if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"protocols {protocols!r}: {unknown[0]!r} is not a protocol here; choose from {known}"
                         + (" (K-shot runs: 04_fewshot)" if unknown[0] == "fewshot" else ""))
    if len(set(listed)) < len(listed):
        raise ValueError(f"protocols {protocols!r}: name each protocol once")
    return listed


def transfer_sites(dataset: str, scans: pd.DataFrame, target_dataset: str, source_site: str,
                   target_site: str) -> tuple[dict | None, dict | None]:
    """03's site filters ``(source, target)``: the transferred model trains on ``source`` rows of ``dataset`` and is
    tested on ``target`` rows of ``target_dataset`` (None: every row). Within one dataset with sites, two labelled
    sites of ``scans`` (``check_choices``), not the same one (its "transfer" trained and tested in-domain, and its
    paired test read a difference of 0 against itself). With another ``target_dataset``, the source is still
    ``source_site`` where ``scans`` has sites (it trained on every site pooled before) and the target is read whole.
    Without sites, ``(None, None)``."""
    if "site" not in scans:
        return None, None
    check_choices(site=(source_site, dataset, scans))
    if target_dataset != dataset:
        return {"site": source_site}, None
    check_choices(site=(target_site, dataset, scans))
    if source_site == target_site:
        raise ValueError(f"source_site and target_site are both {source_site!r}: nothing is transferred")
    return {"site": source_site}, {"site": target_site}


def check_choices(*, methods=None, protocols=(), site: tuple[str, str, pd.DataFrame] | None = None) -> None:
    """Refuse a notebook's names before any work (a typo used to fail after the first encoders had pretrained):
    ``methods``, pretraining methods (at least one, each registered); ``protocols``, ways to train an encoder's
    classifier, each one of ``encoder_protocols()``; ``site``, ``(name, dataset, scans)``: a labelled site of that
    scan table."""
    if methods is not None:
        if not list(methods):
            from .train.methods import METHODS
            raise ValueError(f"methods is empty: name at least one of {', '.join(METHODS)}")
        from .train import get_method
        for method in methods:
            get_method(method)
    known = encoder_protocols() if protocols else ()
    for protocol in protocols:
        if protocol not in known:
            raise ValueError(f"protocol {protocol!r}: an encoder's classifier here is trained by one of "
                             f"{', '.join(known)}")
    if site is not None:
        name, dataset, scans = site
        if "site" not in scans:
            raise ValueError(f"site {name!r} asked for, but {dataset!r} has no sites (no site column)")
        _site_filter(dataset, scans, name)


def _site_filter(dataset: str, scans: pd.DataFrame, site: str | None) -> dict | None:
    """``{"site": site}`` where ``scans`` has sites and ``site`` is given, else None; a site that is not one of the
    table's labelled sites (``pretrain`` is unlabelled) is a ``ValueError`` naming them."""
    if not site or "site" not in scans:
        return None
    known = sorted(set(scans["site"].dropna()) - {"pretrain"})
    if site not in known:
        raise ValueError(f"site {site!r} is not a labelled site of {dataset!r}; its labelled sites are "
                         f"{', '.join(known) or 'none'}")
    return {"site": site}


def _require_checkpoint_for(preset: str, checkpoint) -> None:
    """Refuse a chain other than the paper's without an encoder ``checkpoint``: this library pretrains (and
    releases) encoders on the paper chain only; the reference chain is the authors' weights' preprocessing."""
    if preset != "paper" and not checkpoint:
        raise ValueError(f"preset {preset!r} is the preprocessing the authors' released weights were trained on: "
                         "pass their file as checkpoint (e.g. checkpoint='model_weights.pth'); the encoders this "
                         "library pretrains or releases use preset 'paper', and pretraining with the reference "
                         "preset is not offered")


def _fitting_checkpoint(checkpoint: Path, profile: Profile, spec: PreprocessSpec):
    """Load ``checkpoint`` (a refused file is a ``CheckpointError`` naming it) and check that it takes the inputs of
    ``spec``, before any cache is built; returns the configuration it records (ours: the pretraining ``method``
    among it; None for the authors' layouts, which carry none) and the encoder's ``LoadReport``."""
    from .models.checkpoints import load_encoder, recorded_config
    encoder = load_encoder(checkpoint)
    size = encoder.config.img_size
    if size != spec.input_size:
        fits = [name for name, q in PROFILES.items() if q.model.img_size == size]
        raise ValueError(f"checkpoint {checkpoint}: the encoder takes {size}³ inputs, but profile {profile.name!r} "
                         f"makes {spec.input_size}³ ones; pass the profile it was made for"
                         + (f" (-p profile {fits[0]})" if fits else ""))
    return recorded_config(checkpoint), encoder.load_report


def _existing_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``checkpoint`` as an absolute path (a relative one is of the working folder: what the figures record must not
    depend on it), or ``FileNotFoundError`` naming it."""
    path = Path(checkpoint).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def pretrain_afresh() -> bool:
    """Whether ``$FMCT_PRETRAIN`` asks to pretrain afresh: ``1`` yes; unset, empty or ``0`` no."""
    value = os.environ.get(PRETRAIN_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"environment variable {PRETRAIN_ENV}={value!r}: use 1 (pretrain afresh) or 0 "
                         "(start from the released encoders)")
    return value == "1"


def ensure_dataset(dataset: str, profile: str | Profile) -> pd.DataFrame:
    """The scan table of ``dataset``. The synthetic cohort is generated at the profile's size when it is
    missing (seed 0: the cohort is data, not an experiment); any other dataset raises
    ``DatasetNotAvailable`` naming its ingest command."""
    p = get_profile(profile)
    if dataset == "synthetic":
        if not is_available("synthetic"):
            from .data.synthetic.cohort import generate_cohort
            generate_cohort(p)
        cohort = scan_table_path("synthetic").parent / "cohort.json"
        sizes = json.loads(cohort.read_text()).get("sizes", {}) if cohort.exists() else {}
        wanted = {"internal": p.synth_internal, "external": p.synth_external, "pretrain": p.synth_pretrain}
        if sizes and sizes != wanted:
            print(f"note: the synthetic cohort under {cohort.parent} was generated with sizes {sizes}, "
                  f"not profile {p.name!r}'s {wanted}; using it as it is")
        from .data.synthetic.cohort import GENERATOR_VERSION
        made_by = json.loads(cohort.read_text()).get("generator_version") if cohort.exists() else GENERATOR_VERSION
        if made_by != GENERATOR_VERSION:
            print(f"note: the synthetic cohort under {cohort.parent} was made by another version of its generator "
                  f"({made_by}; this fmct's is {GENERATOR_VERSION}), so its scans are not this fmct's; delete that "
                  f"folder to generate it anew")
    return load_scans(dataset)


def ensure_cache(dataset: str, profile: str | Profile, preset: str = "paper", *, scans: list[str] | None = None,
                 workers: int | None = None, retry_rejected: bool = False) -> Path:
    """Preprocess every scan of ``dataset`` (or the ``scans`` ids) into the cache of the profile's ``preset``
    chain (``paper`` or the authors' ``reference``); scans already cached, or rejected unless
    ``retry_rejected``, are skipped. ``workers`` processes (default: the CPU count). Returns the cache folder."""
    from .data.cache import build_cache
    from .data.preprocess import preset_spec
    return build_cache(dataset, preset_spec(preset, get_profile(profile)), scans=scans, workers=workers,
                       retry_rejected=retry_rejected)


FEW_PRETRAINING_STEPS = 100  # fewer optimiser steps than this: an encoder barely moved from its initialisation


def ensure_pretrained(method: str, dataset: str, profile: str | Profile, fraction: float = 1.0,
                      seed: int = 0, checkpoint: str | None = None, runs: Path | None = None,
                      afresh: bool | None = None) -> Path:
    """The encoder checkpoint to start from: ``checkpoint`` when given; else the released encoder of
    (dataset, method, fraction, profile, seed) (``train.release.released_encoder``: its sha256 checked) when
    there is one, made for the profile's model and preprocessing, and ``afresh`` (default:
    ``pretrain_afresh()``) is false; else the pretraining run under the runs root ``runs``, resumed or run to
    completion (its cache built first) if it is not done. Prints which it used."""
    if checkpoint:
        return _existing_checkpoint(checkpoint)
    from .train import get_method, pretrain
    get_method(method)  # an unknown method fails before any run is looked for
    from .train.release import encoders_root, released_encoder, verify_release
    from .train.trainer import default_run_dir
    p = get_profile(profile)
    afresh = pretrain_afresh() if afresh is None else afresh
    released = None if afresh else released_encoder(dataset, method, fraction, p, seed)
    if afresh:
        why = f"pretraining afresh ({PRETRAIN_ENV}=1 or afresh=True)"
    elif released is None:
        why = f"no released encoder under {encoders_root()}"
        if os.environ.get("FMCT_ENCODERS") and not encoders_root().is_dir():
            why += " (FMCT_ENCODERS names a folder that does not exist: a typo?)"
        elif not in_checkout():
            why += (" (the demo's released encoders ship with the repository, not the package: "
                    "FMCT_ENCODERS=<clone>/encoders finds them)")
    else:
        why = _unfit_release(released.parent, p)
        if not why:
            print(f"encoder: released {released} (sha256 {verify_release(released.parent)['sha256'][:12]}…)")
            return released
    ensure_cache(dataset, p)
    run_dir = Path(runs or runs_root()) / "pretrain" / default_run_dir(dataset, method, fraction, p.name, seed).name
    print(f"encoder: {why}; the pretraining run {run_dir} (resumed where it stopped, reused when finished)")
    run = pretrain(method=method, dataset=dataset, profile=p, fraction=fraction, seed=seed, run_dir=run_dir)
    if dataset != "synthetic":  # the cohort is sized per profile; a dataset of one's own may be a few dozen scans
        _warn_if_barely_pretrained(Path(run), dataset)
    return Path(run) / "encoder.safetensors"


def _warn_if_barely_pretrained(run: Path, dataset: str) -> None:
    recorded = json.loads((run / "config.json").read_text())["run"]
    if recorded["total_steps"] < FEW_PRETRAINING_STEPS:
        warnings.warn(f"encoder: pretrained {recorded['total_steps']} steps on {recorded['n_scans']} scans of "
                      f"{dataset!r}, too few for it to learn much: what it is compared with says little about "
                      f"pretraining; give it more scans (an unlabelled pool: docs/guide.md, Your own data) or start "
                      f"from an encoder pretrained elsewhere (checkpoint=…)", stacklevel=3)


def _unfit_release(folder: Path, profile: Profile) -> str:
    """Why the release ``folder`` cannot serve ``profile`` (made for another model or preprocessing), or ``""``."""
    from .data.preprocess import paper_spec
    config = json.loads((folder / "config.json").read_text())
    if config["profile"]["model"] != profile.model.to_dict():
        return f"the released {folder.name} has another model than profile {profile.name!r}"
    if config["preprocess"] != json.loads(json.dumps(paper_spec(profile).to_dict())):
        return f"the released {folder.name} was pretrained on another preprocessing than profile {profile.name!r}'s"
    return ""


def ensure_finetuned(dataset: str, task: str, encoder: Path, profile: str | Profile,
                     train_filter: dict | None = None, seed: int = 0, runs: Path | None = None,
                     spec: PreprocessSpec | None = None) -> Path:
    """The encoder of the ``finetune`` run on ``task`` (the classifier of Fig. 1e's run with this seed, reused
    where that run kept it) on the preprocessing ``spec`` (default: the profile's paper chain), saved as
    ``<runs>/finetuned/<profile>/<encoder run>/<dataset>[filter]/<task>/seed<seed>/encoder.safetensors``, with
    ``<preset>-<spec hash>`` after ``<profile>`` for another chain; the attention figures compare it with the
    pretrained encoder (Fig. 5)."""
    from .data.preprocess import paper_spec
    from .downstream import run_protocol
    from .models.checkpoints import save_checkpoint
    p = get_profile(profile)
    spec = spec or paper_spec(p)
    runs = Path(runs or runs_root())
    tag = ",".join(f"{k}={v}" for k, v in sorted((train_filter or {}).items()))
    chain = runs / "finetuned" / p.name
    if spec != paper_spec(p):
        chain = chain / f"{spec.name}-{spec.hash}"
    out = (chain / Path(encoder).parent.name / (dataset + (f"[{tag}]" if tag else "")) / task / f"seed{seed}"
           / "encoder.safetensors")
    from .downstream.runs import checkpoint_signature
    from .downstream.training import HParams
    from .models.checkpoints import read_checkpoint_config
    hparams = json.loads(json.dumps(asdict(HParams.from_profile(p, dataset))))  # as stored: tuples become lists
    pretrained = checkpoint_signature(encoder)  # the weights, wherever they lie
    # the run's kept classifier, trained again where its rows, volumes or settings changed (run_protocol's checks)
    _, classifier = run_protocol(dataset, task, "finetune", str(encoder), p, train_filter=train_filter, seed=seed,
                                 spec=spec, progress=False, return_model=True, run_root=runs / "downstream")
    digest = hashlib.sha256()
    for _, tensor in sorted(classifier.encoder.state_dict().items()):
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    weights = digest.hexdigest()[:16]
    kept = read_checkpoint_config(out) if out.exists() else {}
    if (kept.get("hparams"), kept.get("pretrained"), kept.get("weights")) == (hparams, pretrained, weights):
        return out  # else it holds another fine-tuning's encoder: written again
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, classifier.encoder, config={"model": classifier.encoder.config.to_dict(), "task": task,
                                                     "dataset": dataset, "train_filter": train_filter,
                                                     "pretrained": pretrained, "seed": seed, "weights": weights,
                                                     "preprocess": spec.to_dict(), "hparams": hparams})
    return out


def choose_tasks(scans: pd.DataFrame, tasks: list[str] | None, dataset: str, profile: str | Profile,
                 split: str = "test") -> list[str]:
    """The tasks a notebook evaluates: ``tasks`` (default: the paper's tasks for the dataset among its own,
    ``data.manifest.paper_tasks``) that have at least one positive and one negative in ``split``
    of ``scans`` (so an AUROC exists). Without an explicit list, at most ``profile.max_tasks`` of them
    (those with the most positives; a compute limit of the small profiles). What is left out is printed."""
    p = get_profile(profile)
    explicit = bool(tasks)
    if not explicit:  # the paper's tasks for the dataset (RSNA's five, CQ500's ten; else the NYU ten)
        tasks = paper_tasks(dataset)
    held_out = scans[scans["split"] == split]
    positives, dropped = {}, []
    for task in tasks:
        labels = pd.to_numeric(held_out[task], errors="coerce") if task in held_out else pd.Series(dtype=float)
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if min(n_pos, n_neg) >= 1:
            positives[task] = n_pos
        else:
            dropped.append(f"{task} ({n_pos} positive / {n_neg} negative)")
    if dropped:
        print(f"left out, no AUROC on the {split} split: {', '.join(dropped)}")
    kept = list(positives)
    if not explicit and p.max_tasks and len(kept) > p.max_tasks:
        from .interpret.parts import most_positive_tasks
        kept = most_positive_tasks(scans, kept, p.max_tasks, split)
        print(f"profile {p.name!r} evaluates at most {p.max_tasks} tasks: {', '.join(kept)} "
              f"(pass tasks=[...] for others)")
    if not kept:
        raise ValueError(f"none of {tasks} has both a positive and a negative scan in the {split} split")
    return kept
