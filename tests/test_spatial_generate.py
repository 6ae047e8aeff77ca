"""Spatial data engine: every skill's answer re-derived independently from the stored ground truth,
boxes and marks checked against a re-rendered sim, balance of the answers, dataset writing."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import datasets
import numpy as np
import pytest

from vst_vla.spatial.boxes import box_corners, intrinsics_from_fov, unify_image_fov
from vst_vla.spatial.dataset import SpatialDataConfig, generate_dataset
from vst_vla.spatial.evaluate import blind_prior
from vst_vla.spatial.generate import generate_samples
from vst_vla.spatial.perception import SKILLS, Balancer
from vst_vla.spatial.perception.context import Camera, Obj, clock_hour
from vst_vla.spatial.perception.sim import SimScenes
from vst_vla.spatial.reasoning import THINK_PROMPT, vst_r_role
from vst_vla.spatial.rewards import accuracy, format_reward
from vst_vla.spatial.schema import SCENARIOS, to_messages

W, H = 160, 120
PER_SKILL = 10


@pytest.fixture(scope="module")
def sim():
    scenes = SimScenes(W, H)
    yield scenes
    scenes.close()


@pytest.fixture(scope="module")
def spatial(tmp_path_factory, sim):
    out = tmp_path_factory.mktemp("spatial") / "ds"
    cfg = SpatialDataConfig(output=str(out), samples_per_skill=PER_SKILL, test_samples_per_skill=PER_SKILL,
                            image_width=W, image_height=H, cot_fraction=0.3, rl_fraction=0.2)
    path = generate_dataset(cfg, source=sim)
    return path, datasets.load_from_disk(str(path))


def rows_of(data, split=None):
    splits = [split] if split else ["train", "test"]
    return [r for s in splits for r in data[s]]


# ------------------------------------------------------------------ independent re-derivation helpers
def cam(d):
    return np.asarray(d["intrinsics"]), np.asarray(d["world_from_camera"])


def to_cam(T, p):
    return (np.asarray(p, float) - T[:3, 3]) @ T[:3, :3]


def project(K, pc):
    return np.array([K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]])


def ground_frame(T):
    """(forward, right) of a camera on the table plane: its optical axis flattened, right = forward x up."""
    f = T[:3, 2] * np.array([1.0, 1.0, 0.0])
    f /= np.linalg.norm(f)
    return f, np.array([f[1], -f[0], 0.0])


def relation(d, T):
    f, r = ground_frame(T)
    a, b = float(d @ r), float(d @ f)
    if abs(a) >= abs(b):
        return "to the right of" if a > 0 else "to the left of"
    return "behind" if b > 0 else "in front of"


def corners_world(o):
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    return np.asarray(o["position"]) + (signs * np.asarray(o["size"]) / 2) @ np.asarray(o["rotation"]).T


def matches(o, what):
    if what == "objects":
        return True
    if what.endswith(" objects"):
        return o["color"] == what.split()[0]
    return what == o["shape"] + "s"


def check_boxes(row, meta, gt, labels):
    K, T = cam(meta["cameras"][0])
    ks = meta["facts"]["objects"]
    assert len(gt["boxes"]) == len(ks)
    for k, box in zip(ks, gt["boxes"], strict=True):
        o = meta["objects"][k]
        assert box["label"] == labels[k]
        mine = to_cam(T, corners_world(o))
        theirs = box_corners(box["bbox_3d"])
        dist = np.linalg.norm(mine[:, None] - theirs[None], axis=2).min(1)
        assert dist.max() < 4e-3, (row["id"], dist)  # answers are rounded to the millimetre


def derive(row) -> None:
    """Assert the row's answer follows from its metadata alone (own geometry, not the generator's)."""
    meta, gt, skill = json.loads(row["metadata"]), json.loads(row["ground_truth"]), row["skill"]
    facts, objs, names = meta["facts"], meta["objects"], meta["names"]
    opt = gt.get("options", {}).get(gt.get("choice"))
    if skill == "depth_comparison_points":
        K, T = cam(meta["cameras"][0])
        z = []
        for p in facts["points"]:
            pc = to_cam(T, p["world"])
            assert np.abs(project(K, pc) - (np.array(p["pixel"]) + 0.5)).max() < 1.0
            o = objs[p["object"]]  # the mark lies on its object
            local = (np.asarray(p["world"]) - o["position"]) @ np.asarray(o["rotation"])
            assert np.all(np.abs(local) <= np.asarray(o["size"]) / 2 + 0.006)
            z.append(pc[2])
        want = int(np.argmin(z)) if facts["ask"] == "closer to" else int(np.argmax(z))
        assert gt["choice"] == facts["points"][want]["label"]
    elif skill == "depth_comparison_boxes":
        K, T = cam(meta["cameras"][0])
        boxes = facts["boxes"]
        z = [to_cam(T, objs[b["object"]]["position"])[2] for b in boxes]
        for b in boxes:  # each box frames its object
            u, v = project(K, to_cam(T, objs[b["object"]]["position"]))
            x0, y0, x1, y1 = b["box2d"]
            assert x0 - 2 <= u <= x1 + 3 and y0 - 2 <= v <= y1 + 3
        order = np.argsort(z)
        if facts["ask"] == "order":
            assert opt == ", ".join(f"box {boxes[i]['number']}" for i in order)
        else:
            i = order[0] if facts["ask"] == "closest to" else order[-1]
            assert opt == f"box {boxes[i]['number']}"
    elif skill == "object_distance":
        ref, cands = facts["reference"], facts["candidates"]
        d = [math.dist(objs[ref]["position"], objs[c]["position"]) for c in cands]
        i = int(np.argmin(d)) if facts["ask"] == "nearest to" else int(np.argmax(d))
        assert opt == f"the {names[cands[i]]}"
    elif skill == "measurement_size":
        o = objs[facts["object"]]
        size = o["size"][2] if facts["dimension"] == "height" else o["size"][0]
        assert gt["value"] == pytest.approx(round(100 * size, 1)) and gt["unit"] == "cm"
    elif skill == "measurement_distance":
        ks = facts["objects"]
        other = meta["cameras"][0]["world_from_camera"] if facts["to"] == "camera" else None
        end = np.asarray(other)[:3, 3] if other is not None else objs[ks[1]]["position"]
        assert gt["value"] == pytest.approx(math.dist(objs[ks[0]]["position"], end), abs=6e-4)
    elif skill in ("3d_detection", "multi_view_3d_detection"):
        assert all(matches(objs[k], facts.get("category", "objects")) for k in facts["objects"])
        check_boxes(row, meta, gt, [o["label"] for o in objs])
        hfov, w = meta["camera"]["hfov"], meta["camera"]["width"]
        assert w / (2 * math.tan(math.radians(hfov) / 2)) == pytest.approx(696.32, rel=0.01)  # FoV unified
    elif skill == "3d_grounding":
        check_boxes(row, meta, gt, names)
    elif skill in ("counting", "video_counting"):
        assert all(matches(objs[k], facts["category"]) for k in facts["objects"])
        assert gt["value"] == len(facts["objects"])
    elif skill == "scene_caption":
        text = gt["text"]
        assert all(objs[k]["label"] in text for k in facts["objects"])
    elif skill == "correspondence":
        (K1, T1), (K2, T2) = cam(meta["cameras"][0]), cam(meta["cameras"][1])
        assert np.abs(project(K1, to_cam(T1, facts["world"])) - (np.array(facts["pixel_1"]) + 0.5)).max() < 1.0
        uv = project(K2, to_cam(T2, facts["world"]))
        nearest = min(facts["points_2"], key=lambda c: np.linalg.norm(np.array(facts["points_2"][c]) + 0.5 - uv))
        assert nearest == gt["choice"] and np.linalg.norm(np.array(facts["points_2"][nearest]) + 0.5 - uv) < 1.5
    elif skill == "object_direction":
        a, b = facts["objects"]
        _, T = cam(meta["cameras"][facts["viewpoint"]])
        rel = relation(np.asarray(objs[a]["position"]) - objs[b]["position"], T)
        assert opt == f"{rel} the {names[b]}"
    elif skill == "camera_camera":
        (_, T1), (_, T2) = cam(meta["cameras"][0]), cam(meta["cameras"][1])
        f, r = ground_frame(T1)
        d = T2[:3, 3] - T1[:3, 3]
        hour = round(math.degrees(math.atan2(d @ r, d @ f)) / 30) % 12 or 12
        assert opt == f"{hour} o'clock"
    elif skill == "camera_motion":
        (_, T1), (_, T2) = cam(meta["cameras"][0]), cam(meta["cameras"][1])
        if facts["kind"] == "translation":
            t = T1[:3, :3].T @ (T2[:3, 3] - T1[:3, 3])
            axis = int(np.argmax(np.abs(t)))
            want = [("moved right", "moved left"), ("moved down", "moved up"), ("moved forward", "moved backward")][axis]
            assert opt == want[int(t[axis] < 0)]
        else:
            f2 = T1[:3, :3].T @ T2[:3, 2]
            yaw, pitch = math.atan2(f2[0], f2[2]), math.atan2(-f2[1], math.hypot(f2[0], f2[2]))
            want = ("turned right" if yaw > 0 else "turned left") if abs(yaw) > abs(pitch) else \
                ("tilted up" if pitch > 0 else "tilted down")
            assert opt == want
    elif skill == "appearance_order":
        first = {int(k): v for k, v in facts["first_frame"].items()}
        assert len(set(first.values())) == len(first)
        assert opt == ", then ".join(f"the {names[k]}" for k in sorted(first, key=first.get))
    elif skill == "spatiotemporal":
        k = facts["moved"]
        np.testing.assert_allclose(facts["start"], objs[k]["position"], atol=2e-4)
        disp = np.asarray(facts["end"]) - facts["start"]
        if facts["variant"] == "which":
            assert opt == f"the {names[k]}"
        elif facts["variant"] == "direction":
            f, r = ground_frame(cam(meta["cameras"][0])[1])
            a, b = float(disp @ r), float(disp @ f)
            want = ("to the right" if a > 0 else "to the left") if abs(a) > abs(b) else \
                ("away from the camera" if b > 0 else "toward the camera")
            assert opt == want
        else:
            assert gt["value"] == pytest.approx(100 * np.linalg.norm(disp[:2]), abs=0.06)
    elif skill == "route_order":
        visits = facts["visits"]
        want = {"order": ", then ".join(f"the {names[k]}" for k in visits),
                "first": f"the {names[visits[0]]}", "last": f"the {names[visits[-1]]}"}
        assert opt == want[facts["variant"]]
    else:
        raise AssertionError(f"no independent check for skill {skill!r}")


# ------------------------------------------------------------------ tests
def test_every_skill_and_scenario_is_generated(spatial):
    _, data = spatial
    for split in ("train", "test"):
        counts = Counter(data[split]["skill"])
        assert set(counts) == set(SKILLS) and len(counts) >= 14
        assert all(n == PER_SKILL for n in counts.values())
    assert set(data["test"]["scenario"]) == set(SCENARIOS)
    ids = list(data["train"]["id"]) + list(data["test"]["id"])
    assert len(set(ids)) == len(ids)


def test_answers_follow_from_ground_truth_for_every_skill(spatial):
    _, data = spatial
    checked = Counter()
    for row in rows_of(data):
        derive(row)
        checked[row["skill"]] += 1
    assert set(checked) == set(SKILLS)


def test_each_answer_scores_full_marks_and_cot_is_well_formed(spatial):
    path, data = spatial
    roles = Counter()
    for row in rows_of(data):
        if row["answer_type"] != "text":
            assert accuracy(row["answer"], row["answer_type"], row["ground_truth"]) == pytest.approx(1.0), row["id"]
        role = vst_r_role(row)
        roles[role] += 1
        if row["cot"]:
            assert role in ("cot", "rl") and format_reward(row["answer"]) == 1.0
            assert row["question"].endswith(THINK_PROMPT)
            # camera skills reason about cameras only; a count of 0 has no objects to lay out
            if row["skill"] not in ("camera_camera", "camera_motion", "counting", "video_counting"):
                assert "Bird's-eye layout" in row["answer"]
        messages = to_messages(row, path)  # every image file exists
        assert len([c for c in messages[0]["content"] if c["type"] == "image"]) == len(row["images"])
    assert roles["cot"] > 0 and roles["rl"] > 0
    assert not any(data["test"]["cot"])  # the benchmark split is plain perception


def test_scenarios_have_the_right_number_of_images(spatial):
    _, data = spatial
    for row in rows_of(data):
        n = len(row["images"])
        assert {"single_image": n == 1, "multi_image": n == 2, "video": 4 <= n <= 8}[row["scenario"]], row["id"]


def test_marks_boxes_and_counts_agree_with_a_rerendered_scene(spatial, sim):
    """Re-render each scene from its seed: 3D boxes projected into the unified image land on the
    object's mask, marked points sit on their object, counted objects show and uncounted ones don't."""
    _, data = spatial
    done = Counter()
    for row in data["test"]:
        meta = json.loads(row["metadata"])
        skill, facts = row["skill"], meta["facts"]
        if skill not in ("3d_detection", "3d_grounding", "counting", "depth_comparison_points") or done[skill] >= 4:
            continue
        ctx = sim.context(meta["scene"]["seed"], Balancer(np.random.default_rng(0)))
        labels = [o.label for o in ctx.objects]
        assert labels == [o["label"] for o in meta["objects"]]
        if skill.startswith("3d_"):
            c = meta["camera"]
            intr = intrinsics_from_fov(c["hfov"], c["vfov"], c["width"], c["height"])
            seg = ctx.front.seg
            for box in json.loads(row["ground_truth"])["boxes"]:
                x, y, z = box["bbox_3d"][:3]
                u, v = intr.fx * x / z + intr.cx, intr.fy * y / z + intr.cy
                pu, pv = int(u * W / intr.width), int(v * H / intr.height)  # unified -> rendered pixels
                window = seg[max(pv - 1, 0) : pv + 2, max(pu - 1, 0) : pu + 2]
                hit = {ctx.objects[k].label for k in np.unique(window) if k >= 0}
                assert any(box["label"].endswith(h) for h in hit), (row["id"], box, hit)
        elif skill == "counting":
            seg = ctx.view(facts["view"]).seg
            counts = np.bincount(seg.ravel() + 1, minlength=len(labels) + 1)[1:]
            for k, o in enumerate(meta["objects"]):
                if matches(o, facts["category"]):
                    assert (counts[k] > 0) == (k in facts["objects"]), (row["id"], k, counts)
        else:
            view = ctx.view(facts["view"])
            for p in facts["points"]:
                u, v = p["pixel"]
                assert view.seg[v, u] == p["object"]
                assert view.depth[v, u] == pytest.approx(p["depth"], abs=2e-3)
        done[skill] += 1
    assert set(done) == {"3d_detection", "3d_grounding", "counting", "depth_comparison_points"}


def test_unified_front_image_matches_vst_focal(sim):
    ctx = sim.context(3, Balancer(np.random.default_rng(0)))
    img, cam_u = ctx.front_unified
    ref, _, intr = unify_image_fov(ctx.front.rgb, ctx.front.camera.intrinsics)
    assert img.array.shape == ref.shape and cam_u.K[0, 0] == pytest.approx(intr.fx)
    assert intr.fx == pytest.approx(696.3, rel=0.01)


def test_blind_answer_prior_scores_at_chance(spatial):
    """Always answering the train split's most frequent correct letter per skill is chance on test."""
    _, data = spatial
    accuracy, chance, n = blind_prior(list(data["train"]), list(data["test"]))
    assert n >= 80
    assert abs(accuracy - chance) <= 0.03, (accuracy, chance)


def test_binary_content_is_balanced(spatial):
    """closer/farther and left/right style content comes up equally often, not just the letters."""
    _, data = spatial
    asks = defaultdict(Counter)
    for row in rows_of(data):
        facts = json.loads(row["metadata"])["facts"]
        if row["skill"] in ("depth_comparison_points", "object_distance"):
            asks[row["skill"]][facts["ask"]] += 1
        if row["skill"] == "object_direction":
            rel = facts["relation"]
            asks["lr" if "left" in rel or "right" in rel else "fb"][rel] += 1
    pairs = {"depth_comparison_points": ("closer to", "farther from"), "object_distance": ("nearest to", "farthest from"),
             "lr": ("to the left of", "to the right of"), "fb": ("in front of", "behind")}
    assert asks["depth_comparison_points"] and asks["object_distance"]
    for key, c in asks.items():  # blocks of two per split: at most one off in each split
        a, b = pairs[key]
        assert abs(c[a] - c[b]) <= 2, (key, c)


def test_same_seed_same_samples_and_splits_use_other_scenes(sim):
    a = [s.question + s.answer for s, _ in generate_samples(sim, ["counting", "camera_camera"], 3, seed=5)]
    b = [s.question + s.answer for s, _ in generate_samples(sim, ["counting", "camera_camera"], 3, seed=5)]
    assert a == b
    train = {c.scene_id for _, c in generate_samples(sim, ["measurement_size"], 4, seed=5, split="train")}
    test = {c.scene_id for _, c in generate_samples(sim, ["measurement_size"], 4, seed=5, split="test")}
    assert not train & test


def test_clock_hours():
    assert clock_hour(0.0)[0] == 12 and clock_hour(math.pi / 2)[0] == 3
    assert clock_hour(-math.pi / 2)[0] == 9 and clock_hour(math.pi)[0] == 6


def test_generate_dataset_is_atomic_and_refuses_to_overwrite(spatial, tmp_path):
    path, _ = spatial
    cfg = SpatialDataConfig(output=str(path), skills=["measurement_size"], samples_per_skill=1,
                            test_samples_per_skill=1, image_width=W, image_height=H)
    with pytest.raises(FileExistsError):
        generate_dataset(cfg)
    with pytest.raises(ValueError, match="unknown skills"):
        generate_dataset(SpatialDataConfig(output=str(tmp_path / "x"), skills=["nope"]))
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp folders left
    summary = json.loads((path / "spatial_data.json").read_text())
    assert summary["splits"]["test"]["counting"] == PER_SKILL


def test_overwrite_replaces_the_folder(tmp_path, sim):
    out = tmp_path / "small"
    cfg = SpatialDataConfig(output=str(out), skills=["measurement_size", "counting"], samples_per_skill=2,
                            test_samples_per_skill=1, image_width=W, image_height=H)
    generate_dataset(cfg, source=sim)
    (out / "marker").write_text("old")
    cfg.overwrite = True
    generate_dataset(cfg, source=sim)
    assert not (out / "marker").exists()
    assert len(datasets.load_from_disk(str(out))["train"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["small"]


def test_objects_roundtrip_and_camera_frames():
    o = Obj("red cube", "cube", "red", "small", np.array([0.02, 0.02, 0.02]), np.array([0.2, 0.0, 0.01]), np.eye(3))
    cam = Camera(np.array([[100.0, 0, 80], [0, 100, 60], [0, 0, 1]]),
                 np.array([[0, 1, 0, 0.45], [1, 0, 0, 0], [0, 0, -1, 0.5], [0, 0, 0, 1]], float), 160, 120)
    box = o.box(cam)
    np.testing.assert_allclose(box[:3], to_cam(cam.world_from_camera, o.position), atol=1e-9)
    assert cam.horizontal_frame() is None  # looking straight down


def test_scenes_from_collected_episodes(tmp_path):
    """episodes_root mode: real expert frames, ground truth from the recording, answers still derive."""
    from vst_vla.collect import CollectConfig, collect
    from vst_vla.spatial.perception.episodes import EpisodeScenes

    root = tmp_path / "episodes"
    collect(CollectConfig(root=str(root), tasks=["place_relative"], episodes_per_task=1, image_size=48))
    source = EpisodeScenes(str(root))
    skills = ["depth_comparison_points", "3d_detection", "spatiotemporal", "camera_motion"]
    samples = list(generate_samples(source, skills, 1))
    with pytest.raises(ValueError, match="route_order"):  # expert episodes have no gripper tour
        next(generate_samples(source, ["route_order"], 1))
    source.close()
    assert sorted(s.skill for s, _ in samples) == sorted(skills)
    for sample, ctx in samples:
        assert ctx.meta["source"] == "episodes" and ctx.meta["family"] == "place_relative"
        derive(sample.to_row())
        if sample.skill == "spatiotemporal":
            assert len(sample.pixels) == 7 and sample.pixels[0].array.shape == (48, 48, 3)


def test_label_colours_mark_each_point_and_box_in_its_own_colour(tmp_path, sim):
    """`mark_colors`: the pixel under each marked point (and each numbered box's edge) in the saved
    image has its label's colour, the same scene drawn VST's way has the single marker colour at both,
    and `mark_scale` enlarges the marker; the questions do not change."""
    import cv2

    from vst_vla.spatial.draw import LABEL_COLORS, LABEL_ORDER, MARKER, MarkStyle

    skills = ["depth_comparison_points", "depth_comparison_boxes"]
    rows = {}
    for name, scale, colours in (("vst", 1.0, False), ("coloured", 2.0, True)):
        out = generate_dataset(SpatialDataConfig(output=str(tmp_path / name), skills=skills, samples_per_skill=4,
                                                 test_samples_per_skill=1, image_width=W, image_height=H,
                                                 mark_scale=scale, mark_colors=colours), source=sim)
        rows[name] = list(datasets.load_from_disk(str(out))["train"])
    assert [r["question"] for r in rows["vst"]] == [r["question"] for r in rows["coloured"]]
    checked = Counter()
    for vst, coloured in zip(rows["vst"], rows["coloured"], strict=True):
        facts = json.loads(coloured["metadata"])["facts"]
        images = {n: cv2.cvtColor(cv2.imread(str(tmp_path / n / r["images"][0])), cv2.COLOR_BGR2RGB)
                  for n, r in (("vst", vst), ("coloured", coloured))}
        if coloured["skill"] == "depth_comparison_points":
            for p in facts["points"]:
                u, v = p["pixel"]
                want = LABEL_COLORS[LABEL_ORDER[p["label"]]]
                assert np.abs(images["coloured"][v, u].astype(int) - want).max() <= 12, (coloured["id"], p)
                assert np.abs(images["vst"][v, u].astype(int) - MARKER).max() <= 12, (vst["id"], p)
                # 2x the marker (radius 4 vs 2 px here): 3 px right of the mark is still marker in the
                # large style, 4 px right is past VST's marker and its outline
                assert np.abs(images["coloured"][v, u + 3].astype(int) - want).max() <= 12
                assert np.abs(images["vst"][v, u + 4].astype(int) - MARKER).max() > 12
        else:
            for b in facts["boxes"]:
                x0, y0, x1, y1 = (int(c) for c in b["box2d"])
                want = LABEL_COLORS[LABEL_ORDER[str(b["number"])]]
                edge = images["coloured"][(y0 + y1) // 2, x0 - 2 : x0 + 3].astype(int)  # across the left side
                assert (np.abs(edge - want).max(axis=1) <= 12).any(), (coloured["id"], b, edge)
        checked[coloured["skill"]] += 1
    assert set(checked) == set(skills)
    with pytest.raises(ValueError, match="scale"):
        MarkStyle(scale=0)
