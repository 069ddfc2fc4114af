"""Figure and HTML helpers shared by the EDA page (:mod:`pipeline.report.eda`) and the report (:mod:`pipeline.report.run_report`).

matplotlib is used through its object API on the Agg canvas: no pyplot, no global backend
switch, no display needed, and nothing shared between figures, so drawing is safe headless,
in worker processes and beside other code that uses pyplot. Every file goes through
:mod:`pipeline.fileio`'s atomic writes.

The HTML pages are plain, dependency-free documents: inline CSS, no external resource,
and one inline script that records on ``<body>`` how many images loaded
(``data-images-loaded`` / ``data-images-total``), which the rendering test reads back
from headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.fileio import atomic_path

__all__ = ["new_figure", "png_bytes", "save_png", "data_uri", "bar_chart", "heatmap", "label_axis",
           "esc", "html_table", "html_page", "IMAGE_CHECK_SCRIPT", "DPI"]

DPI = 100
# Tick labels are rotated beyond this many classes, or this many characters in all.
_ROTATE_AFTER = 15
_ROTATE_CHARS = 70
# PNG metadata that would change on every run (matplotlib's version is fine, a timestamp is not).
_PNG_METADATA = {"Software": None}


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on an Agg canvas, laid out with the constrained layout engine."""
    fig = Figure(figsize=(max(width, 1.0), max(height, 1.0)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=_PNG_METADATA)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG atomically; returns the path."""
    path = Path(path)
    data = png_bytes(fig, dpi)
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(data)
    return path


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, for an ``<img src>`` that needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def label_axis(ax, labels: list, axis: str = "x") -> None:
    """Class names as tick labels, rotated and shrunk when there are many."""
    n = len(labels)
    positions = np.arange(n)
    text = [str(v) for v in labels]
    longest = max((len(line) for t in text for line in t.split("\n")), default=0)
    size = 9 if n <= 20 else 7 if n <= 40 else 5
    if axis == "x":
        ax.set_xticks(positions)
        rotate = longest * n > _ROTATE_CHARS or (n > _ROTATE_AFTER and longest > 2)
        ax.set_xticklabels(text, rotation=60 if rotate else 0, ha="right" if rotate else "center",
                           rotation_mode="anchor", fontsize=size)
    else:
        ax.set_yticks(positions)
        ax.set_yticklabels(text, fontsize=size)


def bar_chart(ax, categories: list, series: dict[str, list | np.ndarray], ylabel: str = "",
              title: str = "", annotate: bool = False, fmt: str = "{:g}") -> None:
    """Grouped vertical bars: one group per category, one bar per series (in dict order)."""
    n_series = max(len(series), 1)
    width = 0.8 / n_series
    x = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        bars = ax.bar(x + (i - (n_series - 1) / 2) * width, values, width, label=str(name))
        if annotate and len(categories) * n_series <= 40:
            ax.bar_label(bars, labels=[fmt.format(v) if np.isfinite(v) else "" for v in values],
                         fontsize=7, padding=1)
    label_axis(ax, categories, "x")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def heatmap(fig: Figure, ax, matrix: np.ndarray, row_labels: list, col_labels: list, title: str = "",
            xlabel: str = "", ylabel: str = "", vmin: float = 0.0, vmax: float = 1.0, fmt: str = "{:.2f}",
            cmap: str = "Blues", aspect: str = "auto") -> None:
    """A matrix as coloured cells, with the values written in when it is small enough to read."""
    matrix = np.asarray(matrix, dtype=float)
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    label_axis(ax, col_labels, "x")
    label_axis(ax, row_labels, "y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    rows, cols = matrix.shape
    if rows <= 25 and cols <= 25:
        middle = (vmin + vmax) / 2
        size = 8 if max(rows, cols) <= 12 else 6
        for i in range(rows):
            for j in range(cols):
                v = matrix[i, j]
                if math.isfinite(v) and v != 0:
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size,
                            color="white" if v > middle else "black")


# ---- HTML -------------------------------------------------------------------------------------

def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(value, float_format: str) -> tuple[str, bool]:
    """(text, is_number) of one table cell."""
    if isinstance(value, (bool, np.bool_)):
        return str(value), False
    if isinstance(value, (int, np.integer)):
        return str(value), True
    if isinstance(value, (float, np.floating)):
        return ("" if math.isnan(value) else float_format.format(value)), True
    return esc(value), False


def html_table(frame: pd.DataFrame, float_format: str = "{:.4f}", index: bool = False,
               max_rows: int | None = None, caption: str = "") -> str:
    """`frame` as an HTML table: values escaped, numbers right-aligned; long tables cut with a note."""
    if index:
        frame = frame.reset_index()
    shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for value in row:
            text, number = _cell(value, float_format)
            cells.append(f'<td class="num">{text}</td>' if number else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = ""
    if len(shown) < len(frame):
        note = f'<p class="note">First {len(shown)} of {len(frame)} rows shown.</p>'
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    # In a box that scrolls sideways: a wide table never widens the page.
    return (f'<div class="table-box"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>{note}")


# Sets <body data-images-loaded="N" data-images-total="M" data-page-width="W" data-view-width="V"> once the page
# has loaded: every image must load, and the page must not be wider than the window (wide tables scroll in
# their own box).
IMAGE_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.dataset.imagesLoaded = String(ok);
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.pageWidth = String(document.documentElement.scrollWidth);
  document.body.dataset.viewWidth = String(document.documentElement.clientWidth);
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
.table-box { max-width: 100%; overflow-x: auto; }
.table-box td:first-child { min-width: 14em; }
ul.summary { background: #f4f8ff; border-left: 4px solid #4a7bd0; padding: .6em 1em .6em 2em; }
details summary { cursor: pointer; color: #444; }
caption { text-align: left; font-weight: bold; padding: .3em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: .8em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .85em; }
.note { color: #666; font-size: .9em; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: .6em 1em; }
.ok { background: #eef8ee; border-left: 4px solid #4a4; padding: .6em 1em; }
nav a { margin-right: 1em; }
</style>"""


def html_page(title: str, body: str, self_contained: bool = False) -> str:
    """A complete HTML document around `body`.

    With `self_contained`, a Content-Security-Policy allows only inline styles, the inline
    script and ``data:`` images, so a browser refuses anything that would need another file
    or the network: the page provably opens offline on its own.
    """
    csp = ""
    if self_contained:
        csp = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
               'img-src data:; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">\n')
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{csp}"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n{_STYLE}\n{IMAGE_CHECK_SCRIPT}\n</head>\n"
            f"<body>\n<h1>{esc(title)}</h1>\n{body}\n</body>\n</html>\n")
