"""One Rerun layout for every episode-like recording: recorded episodes (`vst-vla viz`), policy
evaluations (`vst-vla eval-policy`) and deployment runs look alike and read the same way.

The entities it expects, which those recordings log:

    world/**                      the 3D scene: table, objects, the arm (`vst_vla.viz.arm`), camera
                                  frustums, gripper path; for a policy world/policy/predicted_chunk and
                                  world/policy/executed_path
    world/cameras/<cam>/image     each camera's image, under its pinhole
    instruction                   TextDocument
    state/<motor>, action/<motor> one Scalars series per joint; the series are named by `log_joint_series`
                                  (episodes: state / action, evaluations: reached / commanded)
    outcome                       TextDocument: the episode's result
    outcome/<metric>              Scalars on the timeline: success and the evaluation's metrics
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import rerun as rr
import rerun.blueprint as rrb
from lerobot_env_vst_vla.robot import JOINT_NAMES as MOTORS
# The eye looks over the robot's right shoulder at the reachable part of the table (robot at the
# origin facing +x, table top z = 0): the whole world's bounds would make the workspace a small patch.
WORKSPACE_EYE = (0.5, -0.42, 0.3)
WORKSPACE_TARGET = (0.17, 0.0, 0.04)
STATE_RGB = (60, 140, 255)  # what the arm reached
ACTION_RGB = (255, 140, 30)  # what was commanded
OUTCOME = "outcome"


def episode_blueprint(cameras: Sequence[str], motors: Sequence[str] = MOTORS, timeline: str = "frame",
                      follow: bool = True, extra_plots: Sequence[str] = ()) -> rrb.Blueprint:
    """Large 3D view on the workspace | cameras side by side over the instruction and the outcome;
    below, one plot per joint (state and action together) and the outcome metrics.

    `follow`: open at the latest frame (the whole executed path, the final outcome); press play to
    replay. It also makes headless screenshots show a defined frame. `extra_plots`: more entity
    subtrees with a plot each (e.g. "action" when actions are not per joint, as with ee_delta).
    """
    scene = rrb.Spatial3DView(origin="world", name="scene", eye_controls=rrb.EyeControls3D(
        position=WORKSPACE_EYE, look_target=WORKSPACE_TARGET, eye_up=(0, 0, 1)))
    cams = [rrb.Spatial2DView(origin=f"world/cameras/{c}", name=c) for c in cameras]
    texts = rrb.Horizontal(rrb.TextDocumentView(origin="instruction", name="instruction"),
                           rrb.TextDocumentView(origin=OUTCOME, contents="$origin", name="outcome"))
    right = rrb.Vertical(rrb.Horizontal(*cams), texts, row_shares=[3, 2]) if cams else texts
    # the legend once, on the first joint: in every other plot it would hide the curves
    plots = [rrb.TimeSeriesView(name=m, contents=[f"state/{rr.escape_entity_path_part(m)}",
                                                  f"action/{rr.escape_entity_path_part(m)}"],
                                plot_legend=rrb.PlotLegend(visible=i == 0)) for i, m in enumerate(motors)]
    plots += [rrb.TimeSeriesView(origin=p, name=p) for p in extra_plots]
    plots.append(rrb.TimeSeriesView(origin=OUTCOME, name="outcome"))
    return rrb.Blueprint(
        rrb.Vertical(rrb.Horizontal(scene, right, column_shares=[3, 2]), rrb.Horizontal(*plots), row_shares=[5, 2]),
        rrb.TimePanel(state="collapsed", timeline=timeline, play_state="following" if follow else "paused"),
        collapse_panels=True)


def log_joint_series(rec: rr.RecordingStream, motors: Sequence[str] = MOTORS, state: str = "state",
                     action: str = "action") -> None:
    """Static names and colours of the per-joint series, so every joint's plot reads the same."""
    for m in motors:
        part = rr.escape_entity_path_part(m)
        rec.log(f"state/{part}", rr.SeriesLines(names=state, colors=[STATE_RGB]), static=True)
        rec.log(f"action/{part}", rr.SeriesLines(names=action, colors=[ACTION_RGB]), static=True)


def log_outcome(rec: rr.RecordingStream, outcome: Mapping, title: str = "outcome") -> None:
    """The episode's result at the current time: a markdown table, and each flag or real number (not
    counts and seeds, which are ints) also as a scalar on the timeline."""
    rows = "\n".join(f"| {k} | `{_fmt(v)}` |" for k, v in outcome.items())
    rec.log(OUTCOME, rr.TextDocument(f"### {title}\n\n| | |\n|---|---|\n{rows}", media_type=rr.MediaType.MARKDOWN))
    for k, v in outcome.items():
        if isinstance(v, bool | float):
            rec.log(f"{OUTCOME}/{rr.escape_entity_path_part(str(k))}", rr.Scalars(float(v)))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
