"""The SQL catalog: assets, runs, predictions, Label Studio tasks, annotations, dataset versions."""

from storage.catalog.db import Catalog, make_engine, upgrade
from storage.catalog.models import (
    AgreementRow,
    Annotation,
    Asset,
    Base,
    DatasetVersion,
    DatasetVersionItem,
    LabelStudioProject,
    LabelStudioTask,
    Prediction,
    Run,
    RunFailure,
)

__all__ = [
    "AgreementRow",
    "Annotation",
    "Asset",
    "Base",
    "Catalog",
    "DatasetVersion",
    "DatasetVersionItem",
    "LabelStudioProject",
    "LabelStudioTask",
    "Prediction",
    "Run",
    "RunFailure",
    "make_engine",
    "upgrade",
]
