"""Server-rendered SVG charts: a stacked bar chart (a value per x and series) and a
horizontal bar chart (one value per label).  No script, no inline style (the page's
Content-Security-Policy allows neither): colours are presentation attributes, and
every text that comes from data is escaped.  Each bar carries a <title> (the exact
number, shown as a tooltip) and `data-value`, which the browser test reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Final

# Okabe-Ito, distinguishable with the common colour-vision deficiencies
PALETTE: Final = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def number(value: float) -> str:
    """1234567 -> '1.2M': axis labels stay short (tables show the exact numbers)."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:g}"


def _open(title: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>'
    )


def stacked_bars(title: str, xs: Sequence[str], series: Mapping[str, Mapping[str, float]],
                 width: int = 720, height: int = 260) -> str:  # fmt: skip
    """One bar per x, stacked by series (series -> x -> value), with a legend."""
    if not xs or not series:
        return f'<p class="empty">{_e(title)}: nothing in this period.</p>'
    left, top, bottom, legend_w = 56, 24, 40, 170
    plot_w, plot_h = width - left - legend_w, height - top - bottom
    totals = [sum(values.get(x, 0) for values in series.values()) for x in xs]
    peak = max(totals) or 1
    step = plot_w / len(xs)
    bar_w = max(1.0, step * 0.8)
    out = [_open(title, width, height)]
    for i in range(5):  # grid lines and the y axis labels
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{number(peak * i / 4)}</text>'
        )
    every = max(1, -(-len(xs) // 8))  # at most 8 x labels, so they never overlap
    for i, x in enumerate(xs):
        bx, base = left + i * step + (step - bar_w) / 2, top + plot_h
        for s, (name, values) in enumerate(series.items()):
            value = values.get(x, 0)
            if not value:
                continue
            h = plot_h * value / peak
            base -= h
            out.append(f'<rect class="bar" x="{bx:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                       f'fill="{PALETTE[s % len(PALETTE)]}" data-x="{_e(x)}" data-series="{_e(name)}" '
                       f'data-value="{value:g}"><title>{_e(x)} {_e(name)}: {value:,.0f}</title></rect>')  # fmt: skip
        if i % every == 0:
            out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                       f'font-size="11">{_e(x[5:] if len(x) == 10 else x)}</text>')  # a day as MM-DD  # fmt: skip
    for s, name in enumerate(series):  # the legend
        y = top + s * 18
        if y > height - 10:
            break
        out.append(
            f'<rect x="{width - legend_w + 10}" y="{y}" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}"/>'
        )
        out.append(f'<text x="{width - legend_w + 28}" y="{y + 10}" font-size="12">{_e(name[:22])}</text>')
    out.append("</svg>")
    return "".join(out)


def hbars(title: str, items: Sequence[tuple[str, float]], width: int = 720, row: int = 22) -> str:
    """One horizontal bar per (label, value), largest first as given."""
    if not items:
        return f'<p class="empty">{_e(title)}: nothing in this period.</p>'
    label_w, right = 200, 90
    height = row * len(items) + 8
    peak = max(v for _, v in items) or 1
    out = [_open(title, width, height)]
    for i, (label, value) in enumerate(items):
        y = 4 + i * row
        w = (width - label_w - right) * value / peak
        out.append(
            f'<text x="{label_w - 8}" y="{y + row * 0.65:.1f}" text-anchor="end" font-size="12">{_e(label[:30])}</text>'
        )
        out.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{max(w, 1):.1f}" height="{row - 6}" '
                   f'fill="{PALETTE[0]}" data-x="{_e(label)}" data-value="{value:g}">'
                   f"<title>{_e(label)}: {value:,.0f}</title></rect>")  # fmt: skip
        out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + row * 0.65:.1f}" font-size="12">{number(value)}</text>')
    out.append("</svg>")
    return "".join(out)
