"""Importers for real datasets (PI-CAI prostate MRI, CheXpert chest x-ray).

Each reads the public release layout, pseudonymises patient and case identifiers, and
writes a medti dataset dir through :class:`medti.data.dataset.DatasetWriter`.
"""

from medti.data.importers.chexpert import ChexpertImportConfig, import_chexpert
from medti.data.importers.common import ImportResult
from medti.data.importers.picai import PicaiImportConfig, import_picai

__all__ = [
    "ChexpertImportConfig",
    "ImportResult",
    "PicaiImportConfig",
    "import_chexpert",
    "import_picai",
]
