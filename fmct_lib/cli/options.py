"""Arguments several subcommands share, with one default each (so ``--profile`` means the same everywhere)."""
from __future__ import annotations

import argparse

from ..config import PROFILES, get_profile

DEFAULT_PROFILE = "demo"
DEFAULT_DATASET = "synthetic"


def profile_name(text: str) -> str:
    """A profile ``get_profile`` knows: a name in ``PROFILES`` or a patch variant ``<name>-p<patch>``."""
    try:
        get_profile(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def positive_int(text: str) -> int:
    """A count that must be at least 1 (steps, a batch size, epochs): ``0`` or ``-5`` is a usage error."""
    return _int_at_least(text, 1)


def count(text: str) -> int:
    """A count that may be 0 (data-loading workers, scans to generate)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {low}, got {value}")
    return value


def add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=DEFAULT_PROFILE, type=profile_name,
                        help=f"geometry, model size and schedule: {' | '.join(PROFILES)}, or <profile>-p<patch> for "
                             f"another patch size (Supp. Fig. 2) (default: {DEFAULT_PROFILE})")


def add_dataset(parser: argparse.ArgumentParser, help: str = "a dataset in the manifest") -> None:
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"{help} (default: {DEFAULT_DATASET})")


def add_preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="paper", choices=["paper", "reference"],
                        help="preprocessing: the paper's chain (default) or the authors' training chain "
                             "(for their released weights)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="default: this process's GPU if any, else cpu")


def csv_list(text: str) -> list[str]:
    """``"a,b,,c"`` → ``["a", "b", "c"]``."""
    return [t for t in text.split(",") if t]


def parse_filter(items: list[str] | None) -> dict | None:
    """``["site=internal", "manufacturer=A+B"]`` → ``{"site": "internal", "manufacturer": ["A", "B"]}``."""
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"filter {item!r} is not COLUMN=VALUE")
        key, value = item.split("=", 1)
        out[key] = value.split("+") if "+" in value else value
    return out


def check_split(option: str, split: str, scans, dataset: str) -> None:
    """Refuse a split (``--eval-split``, ``--split``) that no row of ``scans`` (``dataset``'s scan table) has:
    a misspelt one (``--eval-split tset``) selected nothing and ended in "nothing could be evaluated" or a torch
    error."""
    splits = sorted(set(scans["split"].dropna().astype(str)))
    if split not in splits:
        raise ValueError(f"{option} {split!r} is not a split of {dataset!r} (its splits: {', '.join(splits)})")


def check_filter(option: str, filt: dict | None, scans, dataset: str) -> None:
    """Refuse a filter (``--train-filter``, ``--filter``) whose column ``scans`` (``dataset``'s scan table) lacks or
    whose value no row has (``data.inputs.select_rows``' check), before the cache is built."""
    if filt:
        from ..data.inputs import select_rows
        select_rows(scans, filt, None, None, f"{option} on {dataset}")


def input_size_problem(encoder: str, model, spec) -> str | None:
    """Why the encoder ``model`` (loaded from ``encoder``) cannot take the inputs of the preprocessing ``spec``,
    or None: its input size must be the spec's."""
    if model.config.img_size != spec.input_size:
        return (f"{encoder}: the encoder takes {model.config.img_size}³ inputs but the {spec.name} preprocessing "
                f"of this profile makes {spec.input_size}³ (choose the encoder's --profile)")
    return None


def warn_of_chain(encoder: str, spec) -> None:
    """Warn where the encoder file runs on a preprocessing chain its weights were not trained on (the authors' on
    the paper chain, ours on the reference chain: ``models.checkpoints.chain_warning``), as the notebooks do."""
    import warnings
    from ..models.checkpoints import chain_warning, recorded_config
    if (said := chain_warning(encoder, recorded_config(encoder), spec)) is not None:
        warnings.warn(said, stacklevel=2)
