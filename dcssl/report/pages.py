"""The report's pages: run page, atlas pages, one page per cluster, slide pages."""

from __future__ import annotations

import math
import shlex

from dcssl.report.html import esc, page, pager, table
from dcssl.report.slidemap import cluster_colour
from dcssl.report.summary import ClusterCard

__all__ = ["run_page", "atlas_page", "cluster_page", "slides_page", "exclude_command", "NMI_TEXT"]

NMI_TEXT = (
    "NMI(t-1, t) compares the pseudo-labels of two consecutive epochs: 0 means the clustering "
    "was redrawn from scratch, 1 means every tile stayed with the same companions. It rises while "
    "the encoder learns stable features and levels off when it has little left to learn: a plateau "
    "of NMI together with atlas cards that look the same from one epoch to the next is the time to "
    "stop. The loss starts near ln k (a head that cannot tell the k clusters apart) and should fall "
    "below it within each epoch."
)


def exclude_command(run_dir: str, epoch: int, clusters: list[int], undo: bool = False) -> str:
    ids = ",".join(str(c) for c in clusters)
    return f"python -m dcssl.launch exclude {shlex.quote(run_dir)} --epoch {epoch} --clusters {ids}" + (
        " --undo" if undo else ""
    )


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "–"


def run_page(ctx: dict) -> str:
    epochs, k = ctx["epochs"], ctx["k"]
    rows = [
        [
            r["epoch"],
            _fmt(r.get("loss"), ".4f"),
            _fmt(r.get("nmi_prev"), ".3f"),
            _fmt(r.get("clusters_used"), "d"),
            _fmt(r.get("empty_split"), "d"),
            _fmt(r.get("largest_share"), ".3f"),
            *(_fmt((r.get("seconds") or {}).get(s), ".1f") for s in ("train", "relabel", "cluster")),
        ]
        for r in epochs
    ]
    charts = "".join(f'<img src="img/{name}.png" alt="{name} chart">' for name in ctx["charts"])
    caveats = "".join(f'<p class="note">{esc(c)}</p>' for c in ctx["caveats"])
    status = table(["slide", "status", "tiles", "reason"], ctx["slides"])
    excluded = (
        table(
            ["when", "who", "epoch", "clusters", "tiles", "excluded in all"],
            [
                [
                    x.get("time"),
                    x.get("user"),
                    x.get("epoch"),
                    ("undo " if x.get("undo") else "") + str(x.get("clusters")),
                    x.get("tiles"),
                    x.get("excluded_total"),
                ]
                for x in ctx["exclusions"]
            ],
        )
        if ctx["exclusions"]
        else "<p>No tiles excluded.</p>"
    )
    body = (
        f"<p>{ctx['n_tiles']} tiles from {ctx['n_slides']} slides; atlas of epoch {ctx['epoch']} "
        f"(k = {k}, chance loss ln k = {math.log(max(k, 1)):.3f}).</p>"
        f'<div class="charts">{charts}</div><p class="note">{esc(NMI_TEXT)}</p>{caveats}'
        "<h2>Epochs</h2>"
        + table(
            [
                "epoch",
                "loss",
                "NMI(t-1,t)",
                "clusters used",
                "split",
                "largest share",
                "train s",
                "relabel s",
                "cluster s",
            ],
            rows,
        )
        + f"<h2>Slides</h2><p>{ctx['done']} tiled, {ctx['failed']} failed.</p>{status}"
        + f"<h2>Excluded tiles</h2>{excluded}"
        + f"<h2>Resolved config</h2><pre>{esc(ctx['config'])}</pre>"
    )
    return page(f"DeepCluster run {ctx['run_name']}", body)


def _card(card: ClusterCard, epoch: int, run_dir: str) -> str:
    flagged = " flagged" if card.flags else ""
    slides = ", ".join(f"{esc(s)} ({n})" for s, n in card.top_slides)
    parents = ", ".join(f"{p} ({share:.0%})" for p, share in card.parents) or "–"
    lines = [
        f"<b>{card.size}</b> tiles · {card.slides} slide{'s' if card.slides != 1 else ''}",
        f"top slides: {slides}",
        f"parents (epoch {epoch - 1}): {parents}",
    ]
    if card.sites:
        lines.append("sites: " + ", ".join(f"{esc(s)} ({n})" for s, n in card.sites))
    if card.purity is not None:
        lines.append(f"purity {card.purity:.0%} · majority {esc(card.majority)}")
    if card.flags:
        lines.append('<span class="flag">artefact? ' + esc("; ".join(card.flags)) + "</span>")
    lines.append(f'<code class="cmd">{esc(exclude_command(run_dir, epoch, [card.cluster]))}</code>')
    return (
        f'<div class="card{flagged}" id="c{card.cluster}"><h3><a href="clusters/c{card.cluster}.html">'
        f"cluster {card.cluster}</a></h3>"
        f'<a href="clusters/c{card.cluster}.html"><img src="img/card-{card.cluster}.jpg" '
        f'alt="tiles of cluster {card.cluster}"></a><div>' + "<br>".join(lines) + "</div></div>"
    )


def atlas_page(
    cards: list[ClusterCard], page_no: int, pages: int, epoch: int, run_dir: str, total: int
) -> str:
    nav = pager("atlas", page_no, pages)
    body = (
        f"<p>{total} clusters used at epoch {epoch}, largest first. Each montage shows the tile nearest "
        "the cluster's centre, then tiles drawn from equal-frequency distance bins outward (the "
        "<code>curate</code> rule). Red cards are artefact candidates by tile statistics computed "
        "while tiling (background, blur, pen ink); nothing is excluded until you run the command "
        "on the card.</p>"
        f'{nav}<div class="cards">' + "".join(_card(c, epoch, run_dir) for c in cards) + f"</div>{nav}"
    )
    return page(f"Cluster atlas, epoch {epoch} (page {page_no} of {pages})", body)


def cluster_page(card: ClusterCard, epoch: int, run_dir: str, tile_slides: list[list]) -> str:
    body = (
        f'<p><a href="../atlas-{card.page:04d}.html#c{card.cluster}">back to the atlas</a> · '
        f"{card.size} tiles from {card.slides} slides. Tiles nearest the centre first.</p>"
        f'<img src="../img/page-{card.cluster}.jpg" alt="tiles of cluster {card.cluster}">'
        "<h2>Shown tiles</h2>"
        + table(["#", "slide", "x", "y", "distance"], tile_slides)
        + "<h2>Drop this cluster from training</h2>"
        + f'<code class="cmd">{esc(exclude_command(run_dir, epoch, [card.cluster]))}</code>'
        + f'<p>and to put it back: <code class="cmd">{esc(exclude_command(run_dir, epoch, [card.cluster], True))}</code></p>'
    )
    return page(f"Cluster {card.cluster}, epoch {epoch}", body, root="../")


def _composition(counts: list[tuple[int, int]], total: int) -> str:
    return " ".join(
        f'<span class="swatch" style="background:rgb{cluster_colour(c)}"></span>'
        f'<a href="clusters/c{c}.html">{c}</a> {n / max(total, 1):.0%}'
        for c, n in counts
    )


def slides_page(entries: list[dict], page_no: int, pages: int, epoch: int) -> str:
    blocks = []
    for e in entries:
        head = f"<h3>{esc(e['slide'])}</h3>"
        if e.get("map"):
            info = (
                f"{e['tiles']} tiles kept, {e['dropped']} candidates dropped (×). Clusters: "
                + _composition(e["composition"], e["tiles"])
            )
            if not e["tiles"]:  # kept no tiles: the map shows the mask, the reason says why
                info += f'</p><p class="flag">{esc(e["reason"])}'
            blocks.append(
                f'<div class="slide">{head}<img src="img/{e["map"]}" alt="map of {esc(e["slide"])}"><p>{info}</p></div>'
            )
        else:
            blocks.append(f'<div class="slide failed">{head}<p class="flag">{esc(e["reason"])}</p></div>')
    nav = pager("slides", page_no, pages)
    body = (
        f"<p>Each tiled slide with its tissue mask outlined in green, kept tiles coloured by their "
        f"cluster at epoch {epoch}, candidates dropped as background crossed out; slides that failed or "
        f"kept no tiles, with the reason.</p>{nav}" + "".join(blocks) + nav
    )
    return page(f"Slides (page {page_no} of {pages})", body)
