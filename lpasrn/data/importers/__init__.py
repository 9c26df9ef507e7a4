"""Importers for the plate data users own; each `iter_<format>(src, **options)` yields
(split, PlateRecord | RejectedRecord) and raises LpasrnError for a wrong path or an empty source.

Options every importer accepts (unused ones are ignored): `split_file` (Path or None), `seed` (int).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from lpasrn.data.importers.common import ImportItem
from lpasrn.data.importers.folder import iter_folder
from lpasrn.data.importers.lrlpr import iter_lrlpr
from lpasrn.data.importers.rodosol import iter_rodosol
from lpasrn.data.importers.split import iter_split
from lpasrn.data.importers.ufpr import iter_ufpr
from lpasrn.errors import LpasrnError

IMPORTERS: dict[str, Callable[..., Iterator[ImportItem]]] = {
    "split": iter_split,
    "rodosol": iter_rodosol,
    "ufpr": iter_ufpr,
    "lrlpr": iter_lrlpr,
    "folder": iter_folder,
}


def iter_records(format_name: str, src: Path | str, **options) -> Iterator[ImportItem]:
    """The importer of `format_name` applied to `src`; an unknown format is one clear error."""
    importer = IMPORTERS.get(format_name)
    if importer is None:
        raise LpasrnError(f"unknown import format {format_name!r}; choose one of: {', '.join(IMPORTERS)}")
    return importer(Path(src), **options)


__all__ = ["IMPORTERS", "iter_records", "iter_split", "iter_rodosol", "iter_ufpr", "iter_lrlpr", "iter_folder"]
