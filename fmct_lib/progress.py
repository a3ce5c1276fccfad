"""Progress bars that read right in a terminal, in a live notebook and in a saved one.

Every bar the library draws is this text ``tqdm``, never ``tqdm.auto``: inside Jupyter, ``tqdm.auto`` draws an
ipywidget, which a notebook run by papermill or nbconvert stores as a widget view that reads 0% (the widget's
state is not saved with the outputs). A text bar is a stream output that redraws itself with a carriage
return, so Jupyter shows its last state, live and in the saved file, and a terminal shows it as usual.

Where the bar's file is not a terminal (a notebook kernel, a log file) it redraws at most every
``REDRAW_S_OFF_TERMINAL`` seconds (each redraw is one output of the saved notebook: 720 in an hour, about
100 kB), and always at its end.
"""
from __future__ import annotations

import sys

from tqdm.std import tqdm as _text_tqdm

__all__ = ["tqdm", "REDRAW_S_OFF_TERMINAL"]

REDRAW_S_OFF_TERMINAL = 5.0


class tqdm(_text_tqdm):  # noqa: N801 - a drop-in for tqdm.tqdm, called the same way
    """``tqdm.std.tqdm`` (text), redrawing every ``REDRAW_S_OFF_TERMINAL`` s where its file is not a terminal."""

    def __init__(self, *args, **kwargs):
        if "mininterval" not in kwargs and not _is_terminal(kwargs.get("file") or sys.stderr):
            kwargs["mininterval"] = REDRAW_S_OFF_TERMINAL
        super().__init__(*args, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
