"""Media URLs signed anew before they expire, on a real Label Studio and a real (moto) S3 server: the due ones are
replaced and still open the image, every other field of the task and its annotations stay, a rerun does nothing."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from model.instances import Instances
from storage.annotation.items import ImportItem
from storage.catalog import AnnotationTask, Asset, Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.projects import ensure_project
from storage.labelstudio.server import LabelStudioServer
from storage.media_refresh import MediaRefresh, refresh_media_urls
from storage.prelabel.frames import frame_key
from storage.s3 import presigned_get_url, presigned_url_expiry
from storage.services import Services
from storage.settings import Settings
from tests.support.settings_for import with_label_studio

pytestmark = pytest.mark.labelstudio

_names = itertools.count()
H, W = 24, 32
HOUR, WEEK = 3600, 7 * 24 * 3600


@pytest.fixture()
def services(label_studio_server: LabelStudioServer, settings: Settings, tmp_path: Path) -> Iterator[Services]:
    """Services on the test's S3 and Label Studio, with a catalog of its own."""
    own = with_label_studio(settings, label_studio_server, f"sqlite:///{tmp_path / 'refresh.sqlite'}")
    with Services(own) as made:
        yield made


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 40 * seed, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _project_with_tasks(
    catalog: Catalog, ls_client: LabelStudioClient, s3: Any, bucket: str, ttls: list[int]
) -> tuple[Any, list[int]]:
    """One image task per ``ttls`` entry, its media URL presigned for that many seconds; returns (project, assets)."""
    ids = []
    with catalog.session() as session:
        for i in range(len(ttls)):
            s3.put_object(Bucket=bucket, Key=f"refresh/{i}.png", Body=_png(i))
            asset = Asset(bucket=bucket, key=f"refresh/{i}.png", etag=f"e{i}", size=1, media_type="image", sha256=None)
            asset.width, asset.height, asset.status = W, H, "done"
            session.add(asset)
            session.flush()
            ids.append(asset.id)
    project = ensure_project(ls_client, catalog, f"refresh-{next(_names)}", "image", ["cat"])
    mask = np.zeros((1, H, W), bool)
    mask[0, 4:12, 5:20] = True
    items = [
        ImportItem(
            a,
            presigned_get_url(s3, bucket, f"refresh/{i}.png", ttl),
            Instances(masks=mask, labels=["cat"], scores=np.array([0.9], np.float32)),
            "m@1/x",
        )
        for i, (a, ttl) in enumerate(zip(ids, ttls, strict=True))
    ]
    import_predictions(ls_client, catalog, project, items)
    return project, ids


def _tasks(ls_client: LabelStudioClient, project: Any) -> dict[int, dict[str, Any]]:
    return {t["data"]["maskloop_asset_id"]: t for t in ls_client.iter_tasks(project.external_project_id)}


def _expiries(catalog: Catalog, project: Any) -> dict[int, datetime | None]:
    with catalog.session() as session:
        rows = session.scalars(select(AnnotationTask).where(AnnotationTask.project_id == project.id)).all()
        return {
            r.asset_id: r.media_url_expires_at.replace(tzinfo=UTC) if r.media_url_expires_at else None for r in rows
        }


def test_urls_due_within_the_window_are_signed_anew_and_everything_else_stays(
    services: Services, ls_client: LabelStudioClient, s3: Any, bucket: str
) -> None:
    catalog = services.catalog
    project, (soon, unknown, later) = _project_with_tasks(catalog, ls_client, s3, bucket, [60, 120, WEEK])
    recorded = _expiries(catalog, project)
    now = datetime.now(UTC)
    expires = recorded[soon]
    assert expires is not None and now < expires <= now + timedelta(seconds=60)  # recorded at import, from its URL
    with catalog.session() as session:  # a task imported before expiries were recorded
        session.execute(
            update(AnnotationTask).where(AnnotationTask.asset_id == unknown).values(media_url_expires_at=None)
        )
    before = _tasks(ls_client, project)
    ls_client.create_annotation(before[soon]["id"], ls_client.list_predictions(before[soon]["id"])[0]["result"])

    assert refresh_media_urls(services, project.name, HOUR) == MediaRefresh(refreshed=2, gone=0)

    after = _tasks(ls_client, project)
    for asset_id in (soon, unknown):
        new_url = after[asset_id]["data"]["image"]
        assert new_url != before[asset_id]["data"]["image"]
        assert {k: v for k, v in after[asset_id]["data"].items() if k != "image"} == {
            k: v for k, v in before[asset_id]["data"].items() if k != "image"
        }
        expiry = presigned_url_expiry(new_url)
        assert expiry is not None and expiry > datetime.now(UTC) + timedelta(days=6)
        assert _expiries(catalog, project)[asset_id] == expiry
        image = httpx.get(new_url, timeout=10)
        assert image.status_code == 200 and image.content == _png({soon: 0, unknown: 1}[asset_id])
    assert after[later]["data"] == before[later]["data"]  # not due
    assert after[soon]["total_annotations"] == 1 and after[soon]["total_predictions"] == 1

    assert refresh_media_urls(services, project.name, HOUR) == MediaRefresh()  # nothing is due any more


def test_a_task_deleted_in_label_studio_is_reported_and_the_others_are_refreshed(
    services: Services, ls_client: LabelStudioClient, s3: Any, bucket: str
) -> None:
    project, (deleted, kept) = _project_with_tasks(services.catalog, ls_client, s3, bucket, [60, 60])
    ls_client.request("DELETE", f"/api/tasks/{_tasks(ls_client, project)[deleted]['id']}/")

    assert refresh_media_urls(services, project.name, HOUR) == MediaRefresh(refreshed=1, gone=1)
    expiry = presigned_url_expiry(_tasks(ls_client, project)[kept]["data"]["image"])
    assert expiry is not None and expiry > datetime.now(UTC) + timedelta(days=6)


def test_a_window_as_long_as_the_urls_lifetime_is_refused_and_zero_does_nothing(services: Services) -> None:
    with pytest.raises(ValueError, match="must be shorter than the URLs' lifetime"):
        refresh_media_urls(services, "any", services.settings.presign_ttl_s)
    assert refresh_media_urls(services, "any", 0) == MediaRefresh()


def test_key_frame_tasks_of_a_video_project_get_their_frame_images_url(
    services: Services, ls_client: LabelStudioClient, s3: Any, bucket: str
) -> None:
    from tests.storage.test_harvest_video_views import _setup as _setup_video

    _, videos, frames = _setup_video(services.catalog, ls_client, s3, bucket)
    with services.catalog.session() as session:
        session.execute(update(AnnotationTask).values(media_url_expires_at=None))
        video = session.scalars(select(Asset)).one()

    refreshed = refresh_media_urls(services, videos.name, HOUR)

    frame_tasks = list(ls_client.iter_tasks(frames.external_project_id))
    assert refreshed == MediaRefresh(refreshed=1 + len(frame_tasks), gone=0)
    for task in frame_tasks:
        index = int(task["data"]["maskloop_frame_index"])
        assert f"/{frame_key(services.settings.frames_prefix, video, index)}?" in task["data"]["image"]
    (video_task,) = ls_client.iter_tasks(videos.external_project_id)
    assert f"/{video.key}?" in next(v for v in video_task["data"].values() if isinstance(v, str) and "?" in v)
