"""Rendering of benchmark rows: Markdown table and a self-contained HTML page with a latency-vs-accuracy plot."""

from __future__ import annotations

import html
from typing import Any


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v * scale, spec)


COLUMNS = (
    ("format", lambda r: r.format), ("precision", lambda r: r.precision), ("status", lambda r: r.status),
    ("size MB", lambda r: _fmt(r.size_mb, ".2f")), ("mIoU", lambda r: _fmt(r.miou, ".2f", 100)),
    ("agree %", lambda r: _fmt(r.agreement, ".2f", 100)), ("mIoU drop", lambda r: _fmt(r.miou_drop, ".2f")),
    ("SQNR dB", lambda r: _fmt(r.sqnr_db, ".1f")), ("p50 ms", lambda r: _fmt(r.p50_ms, ".1f")),
    ("p90 ms", lambda r: _fmt(r.p90_ms, ".1f")), ("× eager", lambda r: _fmt(r.vs_eager, ".2f")),
    ("× roofline", lambda r: _fmt(r.vs_roofline, ".1f")), ("load s", lambda r: _fmt(r.load_s, ".2f")),
    ("peak MB", lambda r: _fmt(r.peak_mb, ".0f")),
)


def _title(meta: dict[str, Any]) -> str:
    shape = "x".join(map(str, meta["input"][2:]))
    return (f"{meta['model']} at {shape}, {meta['threads']} threads, {meta['runs']} runs, "
            f"{meta['macs'] / 1e9:.2f} GMAC; accuracy on {meta['data']['count']} images from {meta['data']['source']}")


def render_markdown(meta: dict[str, Any], rows: list) -> str:
    lines = [f"**{_title(meta)}**", "", "| " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(f(r)).replace("|", "/") for _, f in COLUMNS) + " |" for r in rows]
    lines += ["", "mIoU vs labels (— without labels); agree/mIoU drop/SQNR vs eager fp32 PyTorch; × roofline = p50 / "
              "(2·MACs ÷ measured GEMM rate of the precision)."]
    return "\n".join(lines) + "\n"


def _svg(rows: list) -> str:
    pts = [(r.p50_ms, r.agreement, f"{r.format}/{r.precision}") for r in rows
           if r.p50_ms is not None and r.agreement is not None]
    if not pts:
        return "<p>No measured rows to plot.</p>"
    w, h, pad = 640, 360, 50
    xmax = max(p[0] for p in pts) * 1.15
    ymin = min(min(p[1] for p in pts), 0.95)
    sx = lambda v: pad + (w - 2 * pad) * v / xmax  # noqa: E731
    sy = lambda v: h - pad - (h - 2 * pad) * (v - ymin) / (1.0 - ymin + 1e-9)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">p50 latency (ms)</text>',
             f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
             "pixel agreement with fp32</text>",
             f'<text x="{pad}" y="{h - pad + 16}" text-anchor="middle">0</text>',
             f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="middle">{xmax:.0f}</text>',
             f'<text x="{pad - 6}" y="{sy(1.0) + 4}" text-anchor="end">1.00</text>',
             f'<text x="{pad - 6}" y="{h - pad + 4}" text-anchor="end">{ymin:.2f}</text>']
    for x, y, label in pts:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="#3366cc"/>'
                     f'<text x="{sx(x) + 8:.1f}" y="{sy(y) - 6:.1f}">{html.escape(label)}</text>')
    return "\n".join(parts + ["</svg>"])


def render_html(meta: dict[str, Any], rows: list) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(f(r)))}</td>" for _, f in COLUMNS) + "</tr>" for r in rows)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgevit bench</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 6px;text-align:right}</style></head><body>"
            f"<h2>{html.escape(_title(meta))}</h2><table><tr>{head}</tr>{body}</table>{_svg(rows)}</body></html>\n")
