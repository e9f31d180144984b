"""The typed parameters of the pre-label flows: one pydantic model per flow, the single source of its defaults.

Each model is the flow's one parameter (``prelabel_flow(params)``), the source of the CLI's options
(:mod:`flows.options` builds them from the fields, their descriptions and the ``cli`` extras) and of the deployment
defaults (``deployments/prefect.yaml`` states only what differs; ``tests/test_deployments.py`` checks its keys
against these models). They are recorded on the run row (JSON), so they live here, below ``tasks/`` and ``flows/``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from storage.leases import LeaseConfig

# Label Studio caps project titles at 50 characters; we append " (images)", " (videos)" or " (video frames)"
MAX_PROJECT_NAME = 35
StrategyParam = bool | int | float | str | None


def _cli(flag: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"cli": {"flag": flag, **extra}}


class PrelabelParams(BaseModel):
    """What a pre-label run is asked to do: which objects, which model and prompts, into which project."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="s3://bucket/prefix (or one object) to pre-label", json_schema_extra=_cli(""))
    strategy: str = Field(default="everything", description="auto-prompt strategy")
    classes: tuple[str, ...] = Field(default=(), description="class names (text strategy: the prompts)")
    model_id: str = Field(
        default="",
        description="SAM 2 hub id, directory or .pt (default: $MASKLOOP_MODEL_ID)",
        json_schema_extra=_cli("--model"),
    )
    project: str = Field(default="maskloop", description="Label Studio project name prefix")
    batch_size: int = Field(default=32, ge=1, le=1024, description="images per model batch")
    limit: int | None = Field(default=None, ge=0, description="pre-label at most this many assets")
    video_every: int = Field(default=1, ge=1, description="track every k-th frame")
    video_target_fps: float | None = Field(
        default=None, gt=0, description="track at this frame rate instead", json_schema_extra=_cli("--video-fps")
    )
    key_frame_interval: int = Field(default=30, ge=1, description="re-propose objects every this many sampled frames")
    video_max_frames: int | None = Field(default=None, ge=1, description="track at most this many frames")
    video_frame_tasks_every: int = Field(
        default=10,
        ge=0,
        description="also import every k-th tracked frame of a video (and each frame where a track starts, ends or "
        "re-appears) as an image task with brush masks into '<project> (video frames)'; 0: no frame tasks",
        json_schema_extra=_cli("--video-frame-tasks"),
    )
    strategy_params: dict[str, StrategyParam] = Field(
        default_factory=dict,
        description="strategy parameter NAME=VALUE (e.g. points_per_side=16)",
        json_schema_extra=_cli("--param", metavar="NAME=VALUE"),
    )
    retry_failed: bool = Field(
        default=False,
        description="also retry the assets this job failed on for good (corrupt media, deleted objects)",
    )

    @field_validator("source")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"source must be an s3://bucket/prefix URI, got {value!r}")
        return value

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str) -> str:
        if not value or len(value) > MAX_PROJECT_NAME:
            raise ValueError(
                f"project must be 1..{MAX_PROJECT_NAME} characters (Label Studio titles are <= 50 with ' (video frames)'), "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _strategy_known(self) -> PrelabelParams:
        from model.strategies import strategy_spec

        spec = strategy_spec(self.strategy)
        unknown = sorted(set(self.strategy_params) - spec.params())
        if unknown:
            raise ValueError(f"strategy {self.strategy!r} does not take {unknown}; allowed: {sorted(spec.params())}")
        if spec.needs_classes and not self.classes:
            raise ValueError(f"strategy {self.strategy!r} needs at least one class name")
        return self

    def with_model(self, default_model_id: str) -> PrelabelParams:
        """A copy whose ``model_id`` is set (``default_model_id`` when it was left empty)."""
        return self if self.model_id else self.model_copy(update={"model_id": default_model_id})

    @property
    def labels(self) -> list[str]:
        return list(self.classes) if self.classes else ["object"]

    @property
    def prompts(self) -> dict[str, Any]:
        """The prompt settings that differ from the defaults: with the project and the model version, what makes a
        pre-label job (:mod:`storage.catalog.jobs`); empty for the strategy's defaults."""
        prompts: dict[str, Any] = {}
        if self.classes:
            prompts["classes"] = list(self.classes)
        if self.strategy_params:
            prompts["params"] = dict(self.strategy_params)
        defaults = PrelabelParams.model_fields
        video = {name: getattr(self, name) for name in VIDEO_FIELDS if getattr(self, name) != defaults[name].default}
        if video:
            prompts["video"] = video
        return prompts

    def pipeline(self) -> PrelabelParams:
        """Only the fields of :class:`PrelabelParams` (drops what a subclass adds)."""
        return PrelabelParams.model_validate(self.model_dump(include=set(PrelabelParams.model_fields)))


VIDEO_FIELDS = ("video_every", "video_target_fps", "key_frame_interval", "video_max_frames")


class FanoutParams(PrelabelParams):
    """A pre-label fan-out: shard the pending assets into work units, one ``prelabel-unit`` flow run per unit."""

    unit_size: int = Field(default=256, ge=1, description="assets per work unit")
    deployment_name: str | None = Field(
        default=None,
        description="run units through this deployment (e.g. prelabel-unit/prelabel-unit); default: in-process",
    )
    lease_ttl_s: float = Field(default=300.0, gt=0, description="a unit's lease expires this long after its last beat")
    heartbeat_s: float = Field(default=60.0, gt=0, description="how often a worker renews its unit's lease")
    gpu_limit: str | None = Field(default=None, description="global concurrency limit held around model work")

    @model_validator(mode="after")
    def _lease_timing(self) -> FanoutParams:
        self.lease_config()  # heartbeat shorter than the lease, or a live worker would lose it
        return self

    def lease_config(self) -> LeaseConfig:
        return LeaseConfig(ttl_s=self.lease_ttl_s, heartbeat_s=self.heartbeat_s)


class UnitParams(FanoutParams):
    """One work unit of a fan-out (what the dispatcher sends to ``prelabel-unit``)."""

    unit_id: int = Field(ge=1, description="the work unit to claim")


FREEZE_DECODER_ONLY = ("image_encoder", "prompt_encoder")
FREEZABLE = ("image_encoder", "prompt_encoder", "mask_decoder")  # model.finetune.config.FREEZABLE, without torch
FINETUNE_FROM = ("current", "initial")
AGGREGATES = ("min", "mean", "p25")


class ActiveLearningParams(BaseModel):
    """What one active-learning round is asked to do (recorded on the run and the round)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str = Field(description="catalog project name, e.g. 'maskloop (images)'", json_schema_extra=_cli(""))
    strategy: str = Field(default="uncertainty", description="how the pool is ordered for review")
    budget: int = Field(default=50, description="tasks to put first in the review queue")
    finetune: bool = Field(default=True, description="fine-tune the current model (no: only re-score the pool with it)")
    finetune_from: str = Field(
        default="current",
        description="continue from the current model, or retrain from the project's initial model on all corrections",
    )
    model_id: str = Field(
        default="",
        description="model pre-labelling the project (default: last promoted, else the project's, else "
        "$MASKLOOP_MODEL_ID)",
        json_schema_extra=_cli("--model"),
    )
    steps: int = Field(default=300, description="fine-tuning steps")
    lr: float = Field(default=1e-3, description="fine-tuning learning rate")
    batch_size: int = Field(default=2, description="fine-tuning images per step")
    objects_per_image: int = Field(default=2, description="fine-tuning objects sampled per image")
    freeze: tuple[str, ...] = Field(default=FREEZE_DECODER_ONLY, description="modules to freeze (none: train all)")
    box_fraction: float = Field(
        default=0.5, description="fine-tuning: share of prompts that are boxes (the rest are points)"
    )
    held_out_fraction: float = Field(
        default=0.25, description="fraction of corrected items held out", json_schema_extra=_cli("--held-out")
    )
    min_train_items: int = Field(default=2, description="fine-tune only with at least this many train items")
    promote_margin: float = Field(default=0.0, description="held-out IoU gain the new model must exceed")
    accept_iou: float = Field(default=0.9, description="IoU for 'accepted unchanged'")
    seed: int = Field(default=0, description="seed of fine-tuning and selection")
    dest: str | None = Field(
        default=None, description="s3://bucket/prefix: freeze the corrections into a version first"
    )
    dataset: str | None = Field(default=None, description="dataset name for --dest (default: the project name)")
    models_dir: str | None = Field(
        default=None, description="where fine-tuned checkpoints go (default: <data dir>/models)"
    )
    review_view: bool = Field(default=True, description="a 'review next' view of the chosen tasks")
    aggregate: str = Field(default="min", description="how an image's confidence comes from its instances'")
    confidence_weights: dict[str, float] = Field(
        default_factory=dict,
        description="uncertainty signal weight SIGNAL=W (predicted_iou, stability, multimask_agreement, "
        "box_agreement, detector_margin; default: learnt from the corrections, else 1 each)",
        json_schema_extra=_cli("--weight", metavar="SIGNAL=W"),
    )
    calibrate: bool = Field(default=True, description="learn the signal weights from the corrections")
    max_calibration_items: int = Field(default=200, description="corrected items the weights are learnt from")
    score_batch: int = Field(default=16, description="pool items per scoring task")
    num_threads: int | None = Field(
        default=None, description="torch CPU threads for fine-tuning", json_schema_extra=_cli("--threads")
    )
    gpu_limit: str | None = Field(default=None, description="global concurrency limit held around model work")

    @model_validator(mode="after")
    def _valid(self) -> ActiveLearningParams:
        from model.al_scores import SIGNALS
        from model.selection import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"active learning strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.budget < 0:
            raise ValueError(f"active learning budget must be >= 0, got {self.budget}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if not 0.0 < self.accept_iou <= 1.0:
            raise ValueError(f"accept_iou must be in (0, 1], got {self.accept_iou}")
        if self.steps < 1 or self.batch_size < 1 or self.min_train_items < 1 or self.score_batch < 1:
            raise ValueError(
                "steps, batch_size, min_train_items and score_batch must be >= 1, got "
                f"{self.steps}, {self.batch_size}, {self.min_train_items}, {self.score_batch}"
            )
        if self.finetune_from not in FINETUNE_FROM:
            raise ValueError(f"finetune_from must be 'current' or 'initial', got {self.finetune_from!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be min, mean or p25, got {self.aggregate!r}")
        if set(self.freeze) - set(FREEZABLE):
            raise ValueError(f"freeze entries must be in {FREEZABLE}, got {list(self.freeze)}")
        unknown = sorted(set(self.confidence_weights) - set(SIGNALS))
        if unknown:
            raise ValueError(f"confidence_weights name unknown signals {unknown}; known: {list(SIGNALS)}")
        return self

    @classmethod
    def choices(cls) -> dict[str, tuple[str, ...]]:
        """The CLI's choices by field (:func:`flows.options.add_options`)."""
        from model.selection import STRATEGIES

        return {"strategy": STRATEGIES, "finetune_from": FINETUNE_FROM, "aggregate": AGGREGATES, "freeze": FREEZABLE}

    def with_model(self, default_model_id: str) -> ActiveLearningParams:
        """A copy whose ``model_id`` is set (``default_model_id`` when it was left empty): what a run records."""
        return self if self.model_id else self.model_copy(update={"model_id": default_model_id})

    @property
    def weights(self) -> dict[str, float] | None:
        """The explicit signal weights, None when they are to be learnt (or equal)."""
        return dict(self.confidence_weights) or None


class HarvestParams(BaseModel):
    """A harvest: pull a project's corrections into the catalog, optionally freezing them into a dataset version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str = Field(description="catalog project name, e.g. 'maskloop (images)'", json_schema_extra=_cli(""))
    create_version: bool = Field(default=False, description="then freeze a dataset version")
    dest: str | None = Field(default=None, description="s3://bucket/prefix for the version's COCO export and manifest")
    dataset: str | None = Field(default=None, description="dataset name (default: the project name)")
    tag: str | None = Field(default=None, description="a tag for the version")
    polygons: bool = Field(default=False, description="COCO polygons instead of RLE")
    page_size: int = Field(default=100, ge=1, le=1000, description="tasks per page read from the annotation backend")
    full: bool = Field(default=False, description="ignore the incremental cursor")
    refresh_urls_within_s: int = Field(
        default=2 * 24 * 3600,
        ge=0,
        description="then sign anew the tasks' media URLs that expire within this many seconds (0: never)",
    )

    @model_validator(mode="after")
    def _dest_for_a_version(self) -> HarvestParams:
        if self.create_version and not self.dest:
            raise ValueError("create_version needs dest (s3://bucket/prefix for the COCO export and manifest)")
        if self.dest is not None and not self.dest.startswith("s3://"):
            raise ValueError(f"dest must be an s3://bucket/prefix URI, got {self.dest!r}")
        return self
