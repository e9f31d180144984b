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
    WorkUnit,
    WorkUnitAsset,
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
    "WorkUnit",
    "WorkUnitAsset",
    "make_engine",
    "upgrade",
]
