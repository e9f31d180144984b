import numpy as np
import pytest

from model.masks import rles_to_masks
from model.synthetic import FAMILIES, SyntheticDomain, to_coco


def test_same_seed_gives_identical_pixels_and_masks():
    a, b = SyntheticDomain().image(7), SyntheticDomain().image(7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert a.families == b.families


def test_different_seeds_give_different_images():
    assert not np.array_equal(SyntheticDomain().image(1).image, SyntheticDomain().image(2).image)


def test_visible_masks_are_disjoint_non_empty_and_match_image_size():
    for seed in range(6):
        sample = SyntheticDomain(size=128, radius=(10, 30)).image(seed)
        assert sample.masks.shape[1:] == (128, 128)
        assert sample.masks.shape[0] >= 1
        assert sample.masks.sum(0).max() <= 1  # no pixel belongs to two objects
        assert sample.masks.reshape(len(sample.masks), -1).sum(1).min() >= 48


def test_families_parameter_restricts_the_shapes_drawn():
    domain = SyntheticDomain(families=("ring",), textures=("solid",))
    families = {f for seed in range(5) for f in domain.image(seed).families}
    textures = {t for seed in range(5) for t in domain.image(seed).textures}
    assert families == {"ring"}
    assert textures == {"solid"}
    assert "families=ring" in domain.version


def test_ring_masks_have_a_hole():
    sample = SyntheticDomain(families=("ring",), n_objects=(1, 1), radius=(40, 40)).image(3)
    mask = sample.masks[0]
    ys, xs = np.nonzero(mask)
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    assert not mask[cy, cx]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"families": ("hexagon",)}, "families"),
        ({"families": ()}, "families"),
        ({"textures": ("plaid",)}, "textures"),
        ({"n_objects": (3, 2)}, "n_objects"),
        ({"n_objects": (0, 2)}, "n_objects"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"radius": (0, 4)}, "radius"),
        ({"size": 8}, "size"),
        ({"size": 64}, "radius"),
    ],
)
def test_invalid_domain_parameters_raise_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDomain(**kwargs)


def test_clip_is_seeded_and_masks_are_per_frame_per_object():
    domain = SyntheticDomain(size=96, radius=(10, 20), n_objects=(2, 3))
    a, b = domain.clip(5, n_frames=6), domain.clip(5, n_frames=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert a.frames.shape == (6, 96, 96, 3)
    assert a.masks.shape[:2] == (6, len(a.families))
    assert a.masks.sum(1).max() <= 1


def test_clips_contain_objects_that_leave_and_reenter_the_frame():
    domain = SyntheticDomain(size=96, radius=(10, 20), n_objects=(3, 3))
    found = False
    for seed in range(20):
        areas = domain.clip(seed, n_frames=16).masks.reshape(16, 3, -1).sum(-1)
        for obj in range(3):
            seen = areas[:, obj] > 0
            first, last = np.argmax(seen), len(seen) - 1 - np.argmax(seen[::-1])
            if seen.any() and not seen[first : last + 1].all():
                found = True
    assert found


def test_clips_contain_occlusion_where_an_object_is_partly_hidden_behind_another():
    domain = SyntheticDomain(size=96, radius=(14, 24), n_objects=(3, 3))
    clip = domain.clip(2, n_frames=12)
    assert (clip.masks <= clip.amodal).all()  # visible is always part of the whole silhouette
    visible = clip.masks.reshape(12, 3, -1).sum(-1)
    whole = clip.amodal.reshape(12, 3, -1).sum(-1)
    partly_hidden = (visible > 0) & (visible < whole)
    assert partly_hidden.any()
    # the front-most object (painted last) is never covered
    assert np.array_equal(visible[:, -1], whole[:, -1])


def test_clip_rejects_zero_frames():
    with pytest.raises(ValueError, match="n_frames"):
        SyntheticDomain().clip(0, n_frames=0)


def test_to_coco_round_trips_masks_and_boxes():
    samples = [SyntheticDomain(size=64, radius=(8, 16)).image(s) for s in range(3)]
    dataset, arrays = to_coco(samples)
    assert len(arrays) == 3 and len(dataset["images"]) == 3
    assert {c["name"] for c in dataset["categories"]} == set(FAMILIES)
    for info, sample in zip(dataset["images"], samples, strict=True):
        anns = [a for a in dataset["annotations"] if a["image_id"] == info["id"]]
        decoded = rles_to_masks([a["segmentation"] for a in anns])
        assert np.array_equal(decoded, sample.masks)
        assert [a["area"] for a in anns] == sample.masks.reshape(len(sample.masks), -1).sum(1).tolist()


def test_scaled_domain_shrinks_object_radii_with_the_image():
    domain = SyntheticDomain.scaled(64, families=("star",))
    assert domain.radius == (4.0, 14.0) and domain.families == ("star",)
    assert domain.image(0).masks.shape[1:] == (64, 64)


@pytest.mark.parametrize("motion", [0.0, 0.5])
def test_clip_motion_scales_movement_from_the_first_pose(motion):
    domain = SyntheticDomain(size=64, radius=(8, 16), n_objects=(2, 3))
    full, scaled = domain.clip(5, n_frames=6), domain.clip(5, n_frames=6, motion=motion)
    assert np.array_equal(full.masks[0], scaled.masks[0]), "every motion starts from the same pose"
    moved = [np.logical_xor(scaled.amodal[t], scaled.amodal[0]).sum() for t in range(1, 6)]
    moved_full = [np.logical_xor(full.amodal[t], full.amodal[0]).sum() for t in range(1, 6)]
    if motion == 0.0:
        assert moved == [0] * 5, "a still clip: the objects do not move"
    else:
        assert 0 < sum(moved) < sum(moved_full)


def test_clip_at_full_motion_is_the_default_clip():
    domain = SyntheticDomain(size=64, radius=(8, 16))
    assert np.array_equal(domain.clip(9, 4).frames, domain.clip(9, 4, motion=1.0).frames)


@pytest.mark.parametrize("motion", [-0.1, 1.5])
def test_clip_rejects_motion_outside_0_1(motion):
    with pytest.raises(ValueError, match="motion must be in"):
        SyntheticDomain(size=64, radius=(8, 16)).clip(0, 2, motion=motion)
