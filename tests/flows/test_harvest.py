"""The harvest flow on Prefect's test server: harvest + version + media URLs signed anew in one run, recorded as a
run row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from flows.harvest import harvest_flow
from storage.catalog import AnnotationTask, Catalog, DatasetVersion, Run
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.server import LabelStudioServer
from storage.params import HarvestParams
from storage.settings import Settings
from tests.storage.test_harvest_versions import CAT1, DOG1_MOVED, _brush, _setup
from tests.support.settings_for import with_label_studio

pytestmark = pytest.mark.labelstudio


def test_harvest_flow_harvests_and_freezes_a_version_then_reruns_as_a_no_op(
    prefect_api: str,
    label_studio_server: LabelStudioServer,
    ls_client: LabelStudioClient,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'flow.sqlite'}"
    flow_settings = with_label_studio(settings, label_studio_server, url)
    with Catalog(url) as catalog:
        project, task_ids, _ = _setup(catalog, ls_client, s3, bucket, [([CAT1], ["cat"])])
        with catalog.session() as session:  # as if imported before expiries were recorded: its URL is due
            session.execute(update(AnnotationTask).values(media_url_expires_at=None))
    ls_client.create_annotation(task_ids[0], _brush([CAT1, DOG1_MOVED], ["cat", "dog"], "f"))

    dest = f"s3://{bucket}/flow-datasets"
    params = HarvestParams(project=project.name, create_version=True, dest=dest, tag="flow")
    first = harvest_flow(params, settings=flow_settings)
    assert first.harvest.created == 1 and first.harvest.agreement_rows == 2
    assert first.version is not None and first.version.created and first.version.number == 1
    assert (first.media.refreshed, first.media.gone) == (1, 0)
    again = harvest_flow(params.model_copy(update={"tag": None}), settings=flow_settings)
    assert again.harvest.created == 0 and again.version is not None and not again.version.created
    assert again.version.version_id == first.version.version_id
    assert again.media.refreshed == 0  # signed for presign_ttl_s: not due again for days
    with Catalog(url) as catalog, catalog.session() as session:
        runs = session.scalars(select(Run).where(Run.flow_name == "harvest").order_by(Run.id)).all()
        assert [r.status for r in runs] == ["completed", "completed"]
        assert runs[0].counts["created"] == 1 and runs[0].counts["media_urls_refreshed"] == 1

    with pytest.raises(ValueError, match="needs dest"):
        HarvestParams(project=project.name, create_version=True)


def test_harvest_flow_on_a_video_project_harvests_its_key_frame_project_and_freezes_both(
    prefect_api: str,
    label_studio_server: LabelStudioServer,
    ls_client: LabelStudioClient,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    from tests.storage.test_harvest_video_views import _setup as _setup_video
    from tests.storage.test_harvest_video_views import _task_ids

    url = f"sqlite:///{tmp_path / 'flow.sqlite'}"
    flow_settings = with_label_studio(settings, label_studio_server, url)
    with Catalog(url) as catalog:
        _, videos, frames = _setup_video(catalog, ls_client, s3, bucket)
        video_task, frame_tasks = _task_ids(catalog, videos)[-1], _task_ids(catalog, frames)
    ls_client.create_annotation(video_task, ls_client.list_predictions(video_task)[0]["result"])
    for task in frame_tasks.values():
        ls_client.create_annotation(task, ls_client.list_predictions(task)[0]["result"])

    params = HarvestParams(project=videos.name, create_version=True, dest=f"s3://{bucket}/flow-videos")
    result = harvest_flow(params, settings=flow_settings)
    assert result.harvest.created == 1 and result.harvest.frames is not None and result.harvest.frames.created == 3
    assert result.version is not None and result.version.created
    with Catalog(url) as catalog, catalog.session() as session:
        run = session.scalars(select(Run).where(Run.flow_name == "harvest")).one()
        assert (run.status, run.counts["created"], run.counts["frames_created"]) == ("completed", 1, 3)
        version = session.get(DatasetVersion, result.version.version_id)
        assert version is not None and version.counts["frames"] == 10 and version.counts["videos"] == 1
