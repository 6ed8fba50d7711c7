"""Matplotlib for the PNGs dualtrain writes (parity, comparisons): files only, no window."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported only when a picture is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_y(axis: Any) -> None:
    """A log y axis labelled in plain numbers (0.1, 0.2, 0.5), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(plain)
