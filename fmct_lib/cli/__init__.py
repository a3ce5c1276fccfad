"""The ``fmct`` command line: thin subcommands over library calls (docs/architecture.md).

One file per subcommand in this folder, each with two functions, ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); a new subcommand is one file plus one line in ``SUBCOMMANDS``.
Arguments several subcommands share come from ``options`` with one default each. Modules are imported only
when their subcommand runs, so ``fmct --help`` stays fast (no ``import monai`` or ``import umap`` at start-up).
A problem with what the user gave (a dataset not ingested, a bad option value or file: ``USER_ERRORS``) is one
line on stderr, ``fmct <command>: error: …``, and exit status 2, as argparse's own usage errors;
``FMCT_TRACEBACK=1`` shows the traceback instead (``0``, ``false``, ``no``, ``off`` or empty: the line).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..io import LockBusy

EXIT_BAD_INPUT = 2  # what the user gave cannot be used (argparse's status for bad usage)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process SIGINT stopped (128 + 2)
# what a subcommand raises for input it cannot use: a missing dataset, cache or file (``StageMissing`` is a
# FileNotFoundError), a bad value (a filter, an option, a fraction, a device), a run directory another process
# holds (``LockBusy``)
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, argparse.ArgumentTypeError, LockBusy)

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("fmct_lib.cli.info", "show the profiles, the datasets in the manifest and which are available"),
    "synth": ("fmct_lib.cli.synth", "generate the synthetic head-CT cohort under $FMCT_DATA/synthetic"),
    "ingest": ("fmct_lib.cli.ingest", "ingest RSNA, CQ500, a DICOM export or a NIfTI folder into a scan table"),
    "cache": ("fmct_lib.cli.cache", "preprocess a dataset into the model-ready cache"),
    "pretrain": ("fmct_lib.cli.pretrain",  # the methods: ``--help`` lists ``train.methods.METHODS``
                 "self-supervised pretraining (DINO, MAE, VICReg, ...); resumable; torchrun for many GPUs"),
    "finetune": ("fmct_lib.cli.finetune", "fine-tune, probe, scratch and few-shot runs per task"),
    "embed": ("fmct_lib.cli.embed", "export frozen-encoder embeddings as a table"),
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(prog="fmct", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fmct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def _traceback_wanted() -> bool:
    """``$FMCT_TRACEBACK`` set to anything but empty, ``0``, ``false``, ``no`` or ``off``: errors raise as
    tracebacks, for debugging."""
    return os.environ.get("FMCT_TRACEBACK", "").strip().lower() not in ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(load=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    subcommand = importlib.import_module(SUBCOMMANDS[args.command][0])
    return report_errors(f"fmct {args.command}", lambda: subcommand.run(args))


def report_errors(prog: str, work) -> int:
    """Run ``work()`` (a command's body; its exit status, None for 0) as every fmct command runs: a problem with
    what the user gave (``USER_ERRORS``) is one line on stderr, ``<prog>: error: …``, and exit status 2; Ctrl-C
    one line and 130; ``$FMCT_TRACEBACK`` shows the traceback instead. A warning is one line too,
    ``<prog>: warning: …`` (not Python's file, line and source line). The scripts in ``tools/`` run through it."""
    import warnings
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{prog}: warning: {' '.join(str(message).split())}\n"
    try:
        return int(work() or 0)
    except USER_ERRORS as e:
        if _traceback_wanted():
            raise
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; every stage keeps what it finished
        if _traceback_wanted():
            raise
        print(f"\n{prog}: interrupted. What was finished is kept: run the same command again to go on "
              f"from there.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader stopped early (`fmct info | head`): its choice, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no error at exit
        return 0
    finally:
        warnings.formatwarning = formatwarning
