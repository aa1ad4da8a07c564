"""The run report: a static HTML folder (run page, cluster atlas, cluster pages, slide maps).

``build_report(run_dir, epoch)`` writes ``RUN/report/`` whole or not at all. It reads the epoch's
labels, centroid-free per-cluster distances from the feature bank, and only the tiles it shows
(by global index), plus the overview each shard stored at tiling time — never the slides.
"""

from dcssl.report.build import build_report

__all__ = ["build_report"]
