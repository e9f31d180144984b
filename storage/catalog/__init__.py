"""The SQL catalog: assets, runs, predictions, annotation projects and tasks, annotations, dataset versions."""

from storage.catalog.db import Catalog, make_engine, upgrade
from storage.catalog.models import (
    AgreementRow,
    Annotation,
    AnnotationProject,
    AnnotationTask,
    Asset,
    Base,
    DatasetVersion,
    DatasetVersionItem,
    JobAsset,
    Prediction,
    PrelabelJob,
    Run,
    RunFailure,
    SkippedObject,
    WorkUnit,
    WorkUnitAsset,
)
from storage.catalog.models_learning import ActiveLearningItem, ActiveLearningRound, AssetEmbedding, ModelVersion

__all__ = [
    "ActiveLearningItem",
    "ActiveLearningRound",
    "AgreementRow",
    "Annotation",
    "AnnotationProject",
    "AnnotationTask",
    "Asset",
    "AssetEmbedding",
    "Base",
    "Catalog",
    "DatasetVersion",
    "DatasetVersionItem",
    "JobAsset",
    "ModelVersion",
    "Prediction",
    "PrelabelJob",
    "Run",
    "RunFailure",
    "SkippedObject",
    "WorkUnit",
    "WorkUnitAsset",
    "make_engine",
    "upgrade",
]
