"""Loading VST's released data and benchmark question files from small fixtures in their real layouts.

Layouts (see vst_vla/spatial/vst_format.py for the sources):
- rayruiyang/vst_500k: `<subset>/*.parquet` with id, conversations [{from, value}], images [{bytes, path}],
  type, data_source, meta_info (Yangr116/vst prepare_data/sft/convert_json_parquet.py writes these
  columns; vst/preprocess.py reads them; `<|image_pad|>` marks image places);
- the extracted form: `vst_500k.json` (a list of those rows with image paths) + `images/`;
- nyu-visionx/VSI-Bench rows: id, dataset, scene_name, question_type, question, options, ground_truth
  (Yangr116/vst benchmark/eval_vsibench.py); videos at `<dataset>/<scene_name>.mp4`;
- nyu-visionx/CV-Bench test.jsonl: idx, type, task, prompt, choices, answer "(A)", filename (img/...);
- RunsenXu/MMSI-Bench parquet: id, images (embedded), question_type, question, answer, thought; and
  VLMEvalKit's MMSI_Bench.tsv with index, image (base64), category.
"""

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vst_vla.spatial.rewards import accuracy
from vst_vla.spatial.schema import FEATURES, ground_truth, to_messages
from vst_vla.spatial.vst_format import VSTFormatError, load_benchmark_file, load_vst_folder


def _jpeg(value: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def _png(value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), value, np.uint8))
    assert ok
    return buf.tobytes()


def _conv(*turns: str) -> list[dict]:
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(turns)]


_VST_PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("type", pa.string()),
        ("data_source", pa.string()),
        ("meta_info", pa.string()),
    ]
)


def _write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=_VST_PARQUET_SCHEMA), path)


@pytest.fixture
def hf_release(tmp_path: Path) -> Path:
    """A tiny `rayruiyang/vst_500k` download: subset folders of parquet shards with embedded images."""
    root = tmp_path / "vst_500k"
    meta = json.dumps([{"resized_width": -1, "resized_height": -1, "width": 8, "height": 8}])
    _write_parquet(
        root / "si_depth_comparison" / "si_depth_comparison_0.parquet",
        [
            {
                "id": "d1",
                "conversations": _conv(
                    "<|image_pad|>Which point is closer to the camera?\nA. Point 1\nB. Point 2", "B"
                ),
                "images": [{"bytes": _jpeg(10), "path": "d1.jpg"}],
                "type": "depth",
                "data_source": "scannet",
                "meta_info": meta,
            }
        ],
    )
    _write_parquet(
        root / "si_measurement" / "si_measurement_0.parquet",
        [
            {
                "id": "m1",
                "conversations": _conv(
                    "<|image_pad|>How tall is the chair?",
                    "0.9 m",
                    "How wide is the table?",
                    "120 cm",
                    "What is on the table?",
                    "A red cup.",
                ),
                "images": [{"bytes": _png(20), "path": ""}],  # no name: the suffix is sniffed
                "type": "qa",
                "data_source": "arkit",
                "meta_info": meta,
            }
        ],
    )
    _write_parquet(
        root / "mi_camera_motion" / "part-0.parquet",
        [
            {
                "id": "c1",
                "conversations": _conv(
                    "<|image_pad|><|image_pad|>How did the camera move?\nA. left\nB. right\nC. forward",
                    "<think>The scene shifts left.</think>C. forward",
                ),
                "images": [{"bytes": _jpeg(30), "path": "c1_a.jpg"}, {"bytes": _jpeg(40), "path": "c1_b.jpg"}],
                "type": "multi_image_thought",
                "data_source": "scannetpp",
                "meta_info": "[]",
            }
        ],
    )
    return root


def test_hf_release_layout(hf_release: Path):
    ds = load_vst_folder(hf_release)
    assert ds.features == FEATURES
    rows = {r["id"]: r for r in ds}
    assert set(rows) == {
        "si_depth_comparison/d1",
        "si_measurement/m1#0",
        "si_measurement/m1#1",
        "si_measurement/m1#2",
        "mi_camera_motion/c1",
    }

    depth = rows["si_depth_comparison/d1"]
    assert (depth["skill"], depth["scenario"], depth["answer_type"]) == (
        "depth_comparison",
        "single_image",
        "multiple_choice",
    )
    assert depth["question"].startswith("Which point") and "<|image_pad|>" not in depth["question"]
    assert ground_truth(depth) == {"choice": "B", "options": {"A": "Point 1", "B": "Point 2"}}
    # Embedded bytes are written once under <folder>/images/<subset>/ and referenced relatively.
    assert depth["images"] == ["images/si_depth_comparison/d1_0.jpg"]
    assert (hf_release / depth["images"][0]).read_bytes() == _jpeg(10)
    meta = json.loads(depth["metadata"])
    assert meta["vst_type"] == "depth" and meta["data_source"] == "scannet" and meta["meta_info"][0]["width"] == 8

    turns = [rows[f"si_measurement/m1#{k}"] for k in range(3)]
    assert [t["answer_type"] for t in turns] == ["number", "number", "text"]
    assert ground_truth(turns[0]) == {"value": 0.9, "unit": "m"}
    assert ground_truth(turns[1]) == {"value": 120.0, "unit": "cm"}
    assert turns[1]["question"] == "How wide is the table?"
    assert all(t["images"] == ["images/si_measurement/m1_0.png"] for t in turns)
    assert (hf_release / turns[0]["images"][0]).read_bytes() == _png(20)

    motion = rows["mi_camera_motion/c1"]
    assert (motion["scenario"], motion["skill"], motion["cot"]) == ("multi_image", "camera_motion", True)
    assert ground_truth(motion)["choice"] == "C"
    assert motion["images"] == ["images/mi_camera_motion/c1_0.jpg", "images/mi_camera_motion/c1_1.jpg"]
    # The rows feed the scorer and the chat format directly.
    assert accuracy(motion["answer"], motion["answer_type"], ground_truth(motion)) == 1.0
    messages = to_messages(motion, hf_release)
    assert [c["type"] for c in messages[0]["content"]] == ["image", "image", "text"]


def test_subset_filter_and_reload_is_stable(hf_release: Path):
    ds = load_vst_folder(hf_release, subsets=["mi_camera_motion"])
    assert ds["id"] == ["mi_camera_motion/c1"]
    again = load_vst_folder(hf_release, subsets=["mi_camera_motion"])  # images already written
    assert again["images"] == ds["images"]
    with pytest.raises(VSTFormatError, match="no VST samples"):
        load_vst_folder(hf_release, subsets=["si_distanc"])


def test_image_dir_outside_folder_gives_absolute_paths(hf_release: Path, tmp_path: Path):
    ds = load_vst_folder(hf_release, subsets=["si_depth_comparison"], image_dir=tmp_path / "cache")
    path = Path(ds[0]["images"][0])
    assert path.is_absolute() and path == tmp_path / "cache" / "si_depth_comparison" / "d1_0.jpg"


def test_extracted_json_layout(tmp_path: Path):
    """`vst_500k.json` + `images/<id>_<k>.jpg`, as the community extraction script writes them."""
    root = tmp_path / "vst"
    (root / "images").mkdir(parents=True)
    (root / "images" / "x7_0.jpg").write_bytes(_jpeg(50))
    box = {"label": "chair", "bbox_3d": [0.1, 0.2, 2.0, 0.5, 0.9, 0.5, 0.0, 0.1, 0.0]}
    rows = [
        {
            "id": "x7",
            "type": "unknow",
            "images": ["images/x7_0.jpg"],
            "conversations": _conv("<|image_pad|>Detect the chair.", "```json\n" + json.dumps([box]) + "\n```"),
        },
        {"id": "t1", "type": "text", "images": [], "conversations": _conv("What is a chair?", "A seat.")},
    ]
    (root / "vst_500k.json").write_text(json.dumps(rows))
    ds = load_vst_folder(root)
    det, txt = ds[0], ds[1]
    assert (det["id"], det["skill"], det["scenario"], det["answer_type"]) == (
        "x7",
        "unknown",
        "single_image",
        "boxes_3d",
    )
    assert ground_truth(det) == {"boxes": [box]}
    assert det["images"] == ["images/x7_0.jpg"]
    assert (txt["images"], txt["answer_type"], ground_truth(txt)) == ([], "text", {"text": "A seat."})


def test_subset_jsonl_with_image_key_resolved_next_to_file(tmp_path: Path):
    """VST's SFT JSON input: `image` (a string) relative to the JSON file (convert_json_parquet.py)."""
    root = tmp_path / "vst"
    sub = root / "si_distance"
    (sub / "imgs").mkdir(parents=True)
    (sub / "imgs" / "a.jpg").write_bytes(_jpeg(60))
    line = {
        "id": 5,
        "image": "imgs/a.jpg",
        "conversations": _conv("<image>\nHow far apart are the cup and the lamp?", "1.5 meters"),
    }
    (sub / "part.jsonl").write_text(json.dumps(line) + "\n")
    row = load_vst_folder(root)[0]
    assert (row["id"], row["skill"], row["images"]) == ("si_distance/5", "distance", ["si_distance/imgs/a.jpg"])
    assert row["question"] == "How far apart are the cup and the lamp?"
    assert ground_truth(row) == {"value": 1.5, "unit": "m"}


def test_missing_image_names_file_row_and_key(tmp_path: Path):
    root = tmp_path / "vst"
    root.mkdir()
    (root / "vst_500k.json").write_text(
        json.dumps([{"id": "q", "images": ["images/nope.jpg"], "conversations": _conv("Q?", "A")}])
    )
    with pytest.raises(FileNotFoundError) as err:
        load_vst_folder(root)
    msg = str(err.value)
    assert "vst_500k.json" in msg and "row 0" in msg and "'q'" in msg and "'images'" in msg and "nope.jpg" in msg


@pytest.mark.parametrize(
    "row,needle",
    [
        ({"id": "a", "images": []}, "missing key 'conversations'"),
        ({"id": "a", "images": [], "conversations": "hi"}, "key 'conversations' must be a list"),
        (
            {"id": "a", "images": [], "conversations": [{"from": "human", "value": "Q?"}]},
            "no human question followed by a gpt answer",
        ),
        ({"id": "a", "images": [42], "conversations": _conv("Q?", "A")}, "unsupported image entry"),
    ],
)
def test_malformed_rows_raise_with_location(tmp_path: Path, row: dict, needle: str):
    root = tmp_path / "vst"
    (root / "si_distance").mkdir(parents=True)
    (root / "si_distance" / "bad.json").write_text(json.dumps([row]))
    with pytest.raises(VSTFormatError) as err:
        load_vst_folder(root)
    assert needle in str(err.value) and "bad.json: row 0" in str(err.value)


def test_not_a_list_of_rows(tmp_path: Path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(VSTFormatError, match="x.json: expected a list"):
        load_vst_folder(tmp_path)
    (tmp_path / "x.json").write_text("[{")
    with pytest.raises(VSTFormatError, match="x.json: cannot read"):
        load_vst_folder(tmp_path)


# --- benchmarks -----------------------------------------------------------------------------------


def test_vsi_bench(tmp_path: Path):
    (tmp_path / "scannet").mkdir()
    (tmp_path / "scannet" / "scene0011_00.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    rows = [
        {
            "id": 1,
            "dataset": "scannet",
            "scene_name": "scene0011_00",
            "question_type": "object_rel_direction_easy",
            "question": "If I am standing by the sofa facing the TV, is the lamp to my left or right?",
            "options": ["A. left", "B. right"],
            "ground_truth": "B",
        },
        {
            "id": 2,
            "dataset": "scannet",
            "scene_name": "scene0011_00",
            "question_type": "object_counting",
            "question": "How many chairs are in this room?",
            "options": None,
            "ground_truth": "4",
        },
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_benchmark_file(tmp_path / "test.jsonl", "vsi_bench")
    mc, num = ds[0], ds[1]
    assert mc["images"] == ["scannet/scene0011_00.mp4"] and mc["scenario"] == "video"
    assert mc["question"].splitlines() == [
        "These are frames of a video.",
        rows[0]["question"],
        "Options:",
        "A. left",
        "B. right",
        "Answer with the option's letter from the given choices directly.",
    ]
    assert ground_truth(mc) == {"choice": "B", "options": {"A": "left", "B": "right"}}
    assert (num["answer_type"], ground_truth(num), json.loads(num["metadata"])["metric"]) == (
        "number",
        {"value": 4.0},
        "mra",
    )
    assert num["skill"] == "object_counting"
    # A missing video is reported with the row and the keys it came from.
    (tmp_path / "scannet" / "scene0011_00.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"row 0: keys 'dataset'/'scene_name'.*scene0011_00.mp4"):
        load_benchmark_file(tmp_path / "test.jsonl", "vsi_bench")


def test_cv_bench(tmp_path: Path):
    (tmp_path / "img" / "3D" / "depth").mkdir(parents=True)
    (tmp_path / "img" / "3D" / "depth" / "omni3d_sunrgbd_20.png").write_bytes(_png(5))
    row = {
        "idx": 20,
        "type": "3D",
        "task": "Depth",
        "source": "Omni3D",
        "source_dataset": "SUN-RGBD",
        "question": "Which object is closer to the camera taking this photo, the sink or the bottle?",
        "choices": ["sink", "bottle"],
        "prompt": "Which object is closer to the camera taking this photo, the sink (highlighted by a red box) "
        "or the bottle (highlighted by a blue box)?\n(A) sink\n(B) bottle",
        "answer": "(B)",
        "filename": "img/3D/depth/omni3d_sunrgbd_20.png",
    }
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
    ds = load_benchmark_file(tmp_path / "test.jsonl", "cv_bench")
    r = ds[0]
    assert (r["id"], r["skill"], r["answer"], r["images"]) == (
        "20",
        "depth",
        "B",
        ["img/3D/depth/omni3d_sunrgbd_20.png"],
    )
    assert ground_truth(r) == {"choice": "B", "options": {"A": "sink", "B": "bottle"}}
    assert accuracy("(B) bottle", r["answer_type"], ground_truth(r)) == 1.0
    assert accuracy("bottle", r["answer_type"], ground_truth(r)) == 1.0


def test_mmsi_bench_parquet_with_embedded_images(tmp_path: Path):
    question = (
        "The first image is from the front, the second from the left. Where is the lamp relative to the sofa? "
        "Options: A: Left, B: Right, C: Behind, D: In front"
    )
    table = pa.Table.from_pylist(
        [
            {
                "id": 0,
                "images": [{"bytes": _jpeg(1), "path": None}, {"bytes": _jpeg(2), "path": None}],
                "question_type": "Positional Relationship (Obj.-Obj.)",
                "question": question,
                "answer": "C",
                "thought": "Step 1 ...",
            }
        ]
    )
    pq.write_table(table, tmp_path / "MMSI_Bench.parquet")
    r = load_benchmark_file(tmp_path / "MMSI_Bench.parquet", "mmsi_bench")[0]
    assert r["images"] == ["images/mmsi_bench/0_0.jpg", "images/mmsi_bench/0_1.jpg"]
    assert (tmp_path / r["images"][1]).read_bytes() == _jpeg(2)
    assert (r["scenario"], r["skill"]) == ("multi_image", "Positional Relationship (Obj.-Obj.)")
    assert ground_truth(r) == {"choice": "C", "options": {"A": "Left", "B": "Right", "C": "Behind", "D": "In front"}}
    assert json.loads(r["metadata"])["thought"] == "Step 1 ..."


def test_mmsi_bench_tsv_with_base64(tmp_path: Path):
    images = json.dumps([base64.b64encode(_jpeg(3) * 40).decode(), base64.b64encode(_jpeg(4) * 40).decode()])
    header = "index\timage\tquestion\tanswer\tcategory\n"
    (tmp_path / "MMSI_Bench.tsv").write_text(header + f"7\t{images}\tWhich way? A: up B: down\tA\tMotion (Cam.)\n")
    r = load_benchmark_file(tmp_path / "MMSI_Bench.tsv", "mmsi_bench")[0]
    assert r["id"] == "7" and r["skill"] == "Motion (Cam.)"
    assert (tmp_path / r["images"][0]).read_bytes() == _jpeg(3) * 40
    assert ground_truth(r)["options"] == {"A": "up", "B": "down"}


def test_benchmark_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown benchmark kind"):
        load_benchmark_file(tmp_path / "x.jsonl", "blink")
    (tmp_path / "cv.jsonl").write_text(
        json.dumps({"idx": 1, "prompt": "Q?\n(A) a\n(B) b", "choices": ["a", "b"], "answer": "(A)"}) + "\n"
    )
    with pytest.raises(VSTFormatError, match=r"cv.jsonl: row 0: missing key 'filename'"):
        load_benchmark_file(tmp_path / "cv.jsonl", "cv_bench")
    (tmp_path / "vsi.jsonl").write_text(json.dumps({"question": "q", "question_type": "t", "ground_truth": "x"}) + "\n")
    with pytest.raises(VSTFormatError, match="missing key 'dataset'"):
        load_benchmark_file(tmp_path / "vsi.jsonl", "vsi_bench")
