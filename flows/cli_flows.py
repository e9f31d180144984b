"""``maskloop prelabel``, ``harvest`` and ``active-learning``: run the flow with the parameters model the options
were generated from (:mod:`flows.options`) and print its typed result."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from flows.cli_settings import stack_settings_of
from flows.options import params_from
from storage.params import ActiveLearningParams, HarvestParams, PrelabelParams

if TYPE_CHECKING:
    from storage.harvest import HarvestReport


def cmd_prelabel(args: argparse.Namespace) -> int:
    from flows.prelabel import prelabel_flow
    from storage.annotation.projects import view_project

    params = params_from(args, PrelabelParams)
    result = prelabel_flow(params, settings=stack_settings_of(args))
    c = result.count
    print(
        f"run {result.run_id} (job {result.job_id}): {c('done')}/{c('assets')} assets pre-labelled, "
        f"{c('failed')} failed, {c('instances')} instances, {result.timings.get('assets_per_s', 0.0)} assets/s "
        f"({result.model_version})"
    )
    if c("refreshed") or c("kept"):
        print(f"existing tasks: {c('refreshed')} got the new prediction, {c('kept')} already annotated were left alone")
    if c("frame_tasks"):
        print(
            f"video masks: {c('video_frames')} video frames pre-labelled, {c('frame_tasks')} key frames with brush "
            f"masks in '{view_project(params.project, 'frames')}'"
        )
    if c("failed"):
        print(f"failures: maskloop runs show {result.run_id}")
    return 0


def cmd_harvest(args: argparse.Namespace) -> int:
    from flows.harvest import harvest_flow

    result = harvest_flow(params_from(args, HarvestParams), settings=stack_settings_of(args))
    _print_harvest(f"run {result.run_id}: ", result.harvest, "  ")
    if result.harvest.frames is not None:  # a video project's key-frame tasks, harvested with it
        _print_harvest("  key frames (video masks): ", result.harvest.frames, "    ")
    if result.version is not None:
        v = result.version
        print(f"dataset {v.dataset} v{v.number} (id {v.version_id}, {'new' if v.created else 'unchanged'})")
    return 0


def _print_harvest(head: str, h: HarvestReport, indent: str) -> None:
    print(
        f"{head}{h.tasks_seen} tasks seen, {h.created} new and {h.updated} changed annotations, "
        f"{h.skipped} skipped, {len(h.invalid)} invalid, {h.agreement_rows} agreement rows"
    )
    for ann_id, reason in h.invalid.items():
        print(f"{indent}invalid annotation {ann_id}: {reason}")


def cmd_active_learning(args: argparse.Namespace) -> int:
    from flows.active_learning import active_learning_flow

    params = params_from(args, ActiveLearningParams)
    result = active_learning_flow(params, settings=stack_settings_of(args))
    m = result.metrics
    print(
        f"round {result.round} (run {result.run_id}): {m['corrected_items']} corrected items, "
        f"{m['train_items']} train / {m['held_out_items']} held out"
    )
    if "finetune" in m:
        ft = m["finetune"]
        print(f"  fine-tuned {ft['model_version']} ({ft['steps']} steps, {ft['seconds']:.0f} s)")
    else:
        print(f"  no fine-tuning: {m.get('finetune_skipped', '-')}")
    held = m.get("held_out")
    if held:
        old, new = held["old"], held["new"]
        print(
            f"  held-out mean IoU {old['mean_iou']:.3f} -> {new['mean_iou']:.3f}, "
            f"accepted unchanged {old['accepted_rate']:.3f} -> {new['accepted_rate']:.3f}"
        )
    print(
        f"  new model promoted; re-pre-labelled {m.get('relabelled', 0)} tasks as {m.get('model_version')}"
        if result.promoted
        else f"  model kept ({m.get('not_promoted', 'no new model')})"
    )
    weights = m.get("confidence_weights") or {}
    print(f"  uncertainty signal weights: {weights.get('source')} {weights.get('weights') or ''}".rstrip())
    pool = m["pool"]
    print(
        f"  pool of {pool['items']} tasks scored with {pool['scored_with']} ({params.strategy}); "
        f"review next: {result.chosen_tasks[:20]}{' ...' if len(result.chosen_tasks) > 20 else ''}"
    )
    return 0
