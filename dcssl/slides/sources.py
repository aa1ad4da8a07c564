"""Where slides come from: a folder, a glob, or a GDC manifest (``id filename md5 size state``).

``resolve_slides(spec)`` turns what the user typed into a list of ``SlideRef``: the stable,
JSON-serialisable slide list a tiling array indexes into.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc.checkpoint import atomic_write_text
from hpc.config import ConfigError, read_text_file

__all__ = [
    "SlideRef",
    "SourceError",
    "resolve_slides",
    "read_gdc_manifest",
    "save_slide_list",
    "load_slide_list",
    "SLIDE_SUFFIXES",
]

# Formats openslide reads (plus .tif/.tiff: generic tiled TIFF). A folder is filtered by these;
# a glob is taken as given, so a non-slide file it matches lands in the ledger with a reason.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ".czi"}
)
_GDC_COLUMNS = ("id", "filename", "md5", "size")


class SourceError(ConfigError):
    """The slide source cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class SlideRef:
    """One slide to tile: a local file, or a GDC file id to stream."""

    slide_id: str
    """Stable name of the slide (file name without suffix); names the shard."""
    path: str | None = None
    """Local file (folder / glob inputs)."""
    gdc_id: str | None = None
    """GDC file UUID (manifest inputs); the slide is streamed from <base_url>/data/<gdc_id>."""
    filename: str | None = None
    """File name from the manifest (keeps the suffix openslide needs to recognise the format)."""
    md5: str | None = None
    """Expected md5 from the manifest."""
    size: int | None = None
    """Expected size in bytes from the manifest."""

    @property
    def remote(self) -> bool:
        return self.gdc_id is not None


def _stem(name: str) -> str:
    path = Path(name)
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _unique(refs: list[SlideRef], where: str) -> list[SlideRef]:
    seen: dict[str, SlideRef] = {}
    for ref in refs:
        if ref.slide_id in seen:
            other = seen[ref.slide_id]
            raise SourceError(
                f"{where}: two slides share the id {ref.slide_id!r} "
                f"({other.path or other.gdc_id}, {ref.path or ref.gdc_id}); "
                "rename one or tile them into separate runs"
            )
        seen[ref.slide_id] = ref
    return refs


def _from_folder(folder: Path) -> list[SlideRef]:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SLIDE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    refs = []
    for p in files:
        rel = p.relative_to(folder)
        # slides in sub-folders keep their folder in the id, so a/x.svs and b/x.svs stay distinct
        slide_id = str(rel.parent / _stem(rel.name)) if rel.parent != Path(".") else _stem(rel.name)
        refs.append(SlideRef(slide_id=slide_id, path=str(p.resolve())))
    return refs


def _looks_like_manifest(path: Path) -> bool:
    """A text table (.tsv/.txt/.manifest) is read as a manifest, so a broken one is refused up
    front instead of being tiled as a slide."""
    return path.suffix.lower() in (".tsv", ".txt", ".manifest")


def read_gdc_manifest(path: str | Path) -> list[SlideRef]:
    """Slides of a gdc-client manifest (TSV with columns ``id filename md5 size [state]``)."""
    path = Path(path)
    refs: list[SlideRef] = []
    with open(path, newline="", errors="replace") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in _GDC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(
                f"{path}: not a GDC manifest (missing column {missing[0]!r}); "
                "expected a TSV with id, filename, md5, size as gdc-client writes"
            )
        for line, row in enumerate(reader, start=2):
            file_id, filename = (row.get("id") or "").strip(), (row.get("filename") or "").strip()
            if not file_id or not filename:
                raise SourceError(f"{path}:{line}: empty id or filename; fix or delete that row")
            try:
                size = int(row["size"]) if (row.get("size") or "").strip() else None
            except ValueError:
                raise SourceError(f"{path}:{line}: size {row['size']!r} is not a number") from None
            refs.append(
                SlideRef(
                    slide_id=_stem(filename),
                    gdc_id=file_id,
                    filename=filename,
                    md5=(row.get("md5") or "").strip().lower() or None,
                    size=size,
                )
            )
    if not refs:
        raise SourceError(f"{path}: the manifest lists no slides (only a header); add rows or pass another")
    seen: set[str | None] = set()
    for ref in refs:
        if ref.gdc_id in seen:
            raise SourceError(f"{path}: file id {ref.gdc_id!r} is listed twice; delete the repeated row")
        seen.add(ref.gdc_id)
    return _unique(refs, str(path))


def resolve_slides(spec: str | Path) -> list[SlideRef]:
    """A folder (its slide files, recursively), a GDC manifest TSV, a slide file, or a glob."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        refs = _from_folder(path)
        if not refs:
            raise SourceError(
                f"{path}: no slide files in this folder (looked for "
                f"{', '.join(sorted(SLIDE_SUFFIXES))}); pass a folder of slides, a "
                "glob or a GDC manifest"
            )
        return _unique(refs, str(path))
    if path.is_file():
        if _looks_like_manifest(path):
            return read_gdc_manifest(path)
        return [SlideRef(slide_id=_stem(path.name), path=str(path.resolve()))]
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise SourceError(
                f"{text}: the glob matches no files; check the pattern (quote it so "
                "the shell does not expand it)"
            )
        return _unique([SlideRef(slide_id=_stem(p.name), path=str(p.resolve())) for p in files], text)
    raise SourceError(
        f"{text}: no such folder, file or glob; pass a folder of slides, a glob "
        "such as 'slides/*.svs' or a GDC manifest .tsv"
    )


def save_slide_list(path: str | Path, refs: list[SlideRef]) -> None:
    """Write the slide list the array indexes into (atomic)."""
    atomic_write_text(path, json.dumps({"slides": [asdict(r) for r in refs]}, indent=1))


def load_slide_list(path: str | Path) -> list[SlideRef]:
    path = Path(path)
    if not path.is_file():
        raise SourceError(
            f"{path}: no slide list; run `python -m dcssl.launch tile RUN_DIR --slides …` first"
        )
    text = read_text_file(path)
    try:
        return [SlideRef(**item) for item in json.loads(text)["slides"]]
    except (ValueError, KeyError, TypeError):
        raise SourceError(f"{path}: not a slide list; run `launch tile RUN_DIR --slides …` again") from None
