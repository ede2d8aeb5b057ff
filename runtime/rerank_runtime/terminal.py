"""Progress bars for the command-line tools (tqdm), shared by rerank-repo and rerank-bench."""

from __future__ import annotations

import os
from typing import Any, TextIO

_FALLBACK_COLUMNS = 100
_FALLBACK_ROWS = 24


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (else: a log, a pipe, a file)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int | None:
    """The terminal's width, or a fallback when it reports none (a pseudo-terminal without a size)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_COLUMNS
    return None if columns > 0 else _FALLBACK_COLUMNS


def progress_bar(stream: TextIO, **options: Any) -> Any:
    """A tqdm bar on ``stream``; ``options`` are tqdm's (total, unit, desc, ...)."""
    from tqdm import tqdm

    columns = _columns(stream)
    # disable=False: rerank-repo sets TQDM_DISABLE to silence the ML libraries' bars, not ours.
    return tqdm(
        file=stream,
        disable=False,
        dynamic_ncols=columns is None,
        ncols=columns,
        nrows=None if columns is None else _FALLBACK_ROWS,  # tqdm draws nothing on a 0-row terminal
        **options,
    )
