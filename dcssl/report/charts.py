"""The run page's charts (PNG, matplotlib): loss with the chance line, NMI, cluster sizes, seconds."""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = ["plot_losses", "loss_chart", "nmi_chart", "sizes_chart", "seconds_chart"]


def _figure(width: float = 5.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def plot_losses(ax, windows: list[dict], epochs: list[dict]) -> None:
    """Window losses spread over (e-1, e] (segment e is the e-th epoch of training), epoch means."""
    for epoch in sorted({w["epoch"] for w in windows}):
        mine = [w for w in windows if w["epoch"] == epoch]
        xs = epoch - 1 + (np.arange(len(mine)) + 1) / len(mine)
        ax.plot(xs, [w["loss"] for w in mine], lw=0.8, color="tab:blue", alpha=0.5)
    trained = [r for r in epochs if r.get("loss") is not None]
    ax.plot(
        [r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", color="tab:red", label="epoch mean"
    )


def loss_chart(windows: list[dict], epochs: list[dict]) -> bytes:
    """Window losses over (e-1, e], epoch means, and ln k: the loss of a head that knows nothing."""
    plt, fig, ax = _figure()
    plot_losses(ax, windows, epochs)
    ks = [r["k"] for r in epochs if r.get("k")]
    if ks:
        ax.axhline(math.log(ks[-1]), ls="--", color="grey", label=f"chance: ln k = {math.log(ks[-1]):.2f}")
    ax.set_xlabel("epoch")
    ax.set_title("training loss (cross-entropy on the pseudo-labels)")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def nmi_chart(epochs: list[dict], chance: float | None = None) -> bytes:
    """NMI(t-1, t) per epoch; ``chance``: what unrelated labellings of so few tiles score."""
    plt, fig, ax = _figure()
    rows = [r for r in epochs if r.get("nmi_prev") is not None]
    ax.plot([r["epoch"] for r in rows], [r["nmi_prev"] for r in rows], "o-", color="tab:green")
    if chance is not None:
        ax.axhline(chance, ls=":", color="grey", label=f"unrelated labellings: {chance:.3f}")
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_title("NMI(labels t-1, labels t)")
    return _png(plt, fig)


def sizes_chart(sizes: np.ndarray, epoch: int) -> bytes:
    plt, fig, ax = _figure()
    ordered = np.sort(sizes[sizes > 0])[::-1]
    ax.bar(np.arange(ordered.size), ordered, width=1.0, color="tab:purple")
    if ordered.size and ordered.max() > 20 * max(ordered.min(), 1):
        ax.set_yscale("log")
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("tiles")
    ax.set_title(f"cluster sizes, epoch {epoch}")
    return _png(plt, fig)


def seconds_chart(epochs: list[dict]) -> bytes:
    plt, fig, ax = _figure()
    bottom = np.zeros(len(epochs))
    xs = [r["epoch"] for r in epochs]
    for stage, colour in (("train", "tab:blue"), ("relabel", "tab:orange"), ("cluster", "tab:green")):
        values = np.array([(r.get("seconds") or {}).get(stage) or 0.0 for r in epochs])
        ax.bar(xs, values, bottom=bottom, color=colour, label=stage)
        bottom += values
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds")
    ax.set_title("seconds per stage")
    ax.legend(fontsize=8)
    return _png(plt, fig)
