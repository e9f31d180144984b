"""The demo's pieces: generated sample media decodes, and the model choice falls back to the bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.demo import DEMO_MODEL, choose_model, sample_media, video_frames_line
from model.images import decode_image
from model.video import probe_video
from storage.settings import Settings


def test_sample_media_are_decodable_images_and_a_clip(tmp_path: Path) -> None:
    media = sample_media(images=3, clips=1)
    images = {k: v for k, v in media.items() if k.endswith(".png")}
    clips = {k: v for k, v in media.items() if k.endswith(".mp4")}
    assert len(images) == 3 and len(clips) == 1
    for key, data in images.items():
        assert decode_image(data, key).shape[2] == 3
    ((key, data),) = clips.items()
    (tmp_path / "clip.mp4").write_bytes(data)
    info = probe_video(tmp_path / "clip.mp4")
    assert info.frame_count == 24 and info.width > 0


def test_sample_media_are_reproducible() -> None:
    assert sample_media(images=2, clips=0) == sample_media(images=2, clips=0)


def test_demo_uses_the_bundled_model_when_sam2_is_not_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model_id, line = choose_model(Settings(data_dir=tmp_path, model_id="facebook/sam2.1-hiera-tiny", device="cpu"))
    assert model_id == DEMO_MODEL
    assert line.startswith(f"model: {DEMO_MODEL}") and "facebook/sam2.1-hiera-tiny" in line and "\n" not in line


def test_demo_looks_for_sam2_on_this_machine_only_and_never_contacts_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.loading

    def no_hub(*_args: object, **_kwargs: object) -> tuple[bool, str]:
        raise AssertionError("the demo tried to reach the Hugging Face hub")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(model.loading, "hub_reachable", no_hub)
    model_id, line = choose_model(Settings(data_dir=tmp_path, model_id="facebook/sam2.1-hiera-tiny", device="cpu"))
    assert model_id == DEMO_MODEL
    assert "not in the local Hugging Face cache" in line  # the reason is the local lookup, not a failed connection


def test_demo_spec_runs_every_deployment_on_the_stacks_process_pool_and_watches_the_demo_prefix() -> None:
    import yaml

    from flows.demo import DEMO_BUCKET, DEMO_PREFIX, demo_spec
    from flows.deploy import DEPLOYMENTS_DIR

    original = yaml.safe_load((DEPLOYMENTS_DIR / "prefect.yaml").read_text())
    spec = demo_spec(yaml.safe_load((DEPLOYMENTS_DIR / "prefect.yaml").read_text()), DEMO_MODEL, {"x": 1})
    assert [d["name"] for d in spec["deployments"]] == [d["name"] for d in original["deployments"]]
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"maskloop-process"}, "the stack's worker"
    by_name = {d["name"]: d for d in spec["deployments"]}
    source = f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"
    assert by_name["discover-every-15-min"]["parameters"]["source"] == source
    assert by_name["prelabel"]["parameters"]["params"]["source"] == source
    (trigger,) = by_name["prelabel-on-upload"]["triggers"]
    assert trigger["match"] == {"prefect.resource.id": f"{source}*"} and trigger["expect"] == ["s3.object.created"]
    assert trigger["parameters"]["params"]["source"].startswith("s3://{{"), "the upload's own object"
    for params in (by_name["prelabel"]["parameters"]["params"], trigger["parameters"]["params"]):
        assert (params["model_id"], params["strategy_params"], params["project"]) == (
            DEMO_MODEL,
            {"x": 1},
            "maskloop-demo",
        )
    assert by_name["harvest"]["parameters"]["params"]["project"] == "maskloop-demo (images)"
    assert by_name["harvest"]["parameters"]["params"]["dest"].startswith(f"s3://{DEMO_BUCKET}/")
    assert [d.get("schedules") for d in spec["deployments"]] == [d.get("schedules") for d in original["deployments"]]


def test_demo_last_line_says_how_many_video_frames_got_masks_and_where_to_correct_them() -> None:
    url = "http://127.0.0.1:8080/projects/3/data"
    assert video_frames_line(24, 9, url) == (
        "video masks: 24 video frames pre-labelled, 9 key frames with brush masks (one region per track) to correct "
        f"at {url}"
    )
    assert video_frames_line(0, 0, None) == (
        "video masks: 0 video frames pre-labelled, no key-frame tasks to correct them on"
    )


def test_demo_finds_the_video_frames_project_page_in_the_catalog(tmp_path: Path) -> None:
    from flows.demo import frames_project_url
    from storage.catalog import AnnotationProject, Catalog

    settings = Settings(data_dir=tmp_path)
    assert frames_project_url(settings, "http://ls:8080", "maskloop-demo") is None
    with Catalog(settings.resolved_database_url) as catalog, catalog.session() as session:
        for name, external_id in (("maskloop-demo (videos)", 4), ("maskloop-demo (video frames)", 5)):
            session.add(
                AnnotationProject(
                    backend_url="http://ls:8080",
                    name=name,
                    external_project_id=external_id,
                    media_kind="image",
                    label_config="<View/>",
                )
            )
    assert frames_project_url(settings, "http://ls:8080/", "maskloop-demo") == "http://ls:8080/projects/5/data"
