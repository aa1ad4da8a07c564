"""HTML building blocks: one stylesheet, a page frame with navigation, escaped tables."""

from __future__ import annotations

from html import escape

__all__ = ["CSS", "page", "table", "esc", "pager"]

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
nav { padding: .6em 0; border-bottom: 1px solid #ddd; margin-bottom: 1em; }
nav a { margin-right: 1.2em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.charts img { width: 32%; min-width: 320px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px; width: 276px; }
.card.flagged { border-color: #d62728; background: #fff6f6; }
.card img { display: block; width: 256px; }
.card h3 { margin: 0 0 4px; font-size: 1em; }
.flag { color: #b00; font-weight: 600; }
code, pre { background: #f6f6f6; font-size: 12px; }
code.cmd { display: block; white-space: pre-wrap; word-break: break-all; padding: 2px 4px; }
pre { padding: .6em; overflow-x: auto; max-height: 30em; }
.note { background: #fffbe6; border: 1px solid #eed; padding: .5em .8em; max-width: 60em; }
.slide { display: inline-block; vertical-align: top; margin: 0 16px 16px 0; max-width: 660px; }
.slide img { max-width: 640px; border: 1px solid #ccc; }
.swatch { display: inline-block; width: .9em; height: .9em; vertical-align: middle; }
"""


def esc(value) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, root: str = "") -> str:
    """A whole HTML document; ``root`` is the relative path back to the report's top folder."""
    nav = " ".join(
        f'<a href="{root}{href}">{label}</a>'
        for href, label in (
            ("index.html", "Run"),
            ("atlas-0001.html", "Cluster atlas"),
            ("slides-0001.html", "Slides"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{esc(title)}</title><link rel="stylesheet" href="{root}style.css"></head>'
        f"<body><nav>{nav}</nav><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def table(header: list[str], rows: list[list], raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (cells that are already HTML)."""
    cell = (lambda v: str(v)) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pager(prefix: str, page_no: int, pages: int) -> str:
    links = [
        f"<b>{p}</b>" if p == page_no else f'<a href="{prefix}-{p:04d}.html">{p}</a>'
        for p in range(1, pages + 1)
    ]
    return f"<p>page {' '.join(links)}</p>" if pages > 1 else ""
