"""Manifests (folder, CSV, JSONL, Parquet; local and memory://), the dataset, bad files, collate."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from arlkit.data.collate import BadFileLog, collate
from arlkit.data.dataset import NO_MASK, ManifestDataset
from arlkit.data.manifest import load_manifest, resolve_path
from arlkit.errors import ConfigError, DataError
from arlkit.registry import default_registries
from arlkit.taxonomy import Taxonomy

TAX = Taxonomy()


def png(value: int = 128, shape: tuple[int, int] = (40, 60), mode: str = "L") -> bytes:
    """A rectangle of speckle around ``value`` on black: a linear-probe scan to detect."""
    arr = np.zeros(shape, np.uint8)
    noise = np.random.default_rng(value).integers(-20, 21, (shape[0] - 10, shape[1] - 16))
    arr[5:-5, 8:-8] = np.clip(value + noise, 30, 255)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def dicom_cine(n: int, shape: tuple[int, int] = (16, 20)) -> bytes:
    """An uncompressed 8-bit multi-frame DICOM whose frame k is filled with 40·(k+1)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "US", shape[0], shape[1], 1
    ds.PhotometricInterpretation, ds.NumberOfFrames = "MONOCHROME2", n
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    frames = np.stack([np.full(shape, 40 * (k + 1), np.uint8) for k in range(n)])
    ds.PixelData = frames.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for organ, values in {"breast": (50, 100), "Liver": (150,), "unknown": (200,)}.items():
        (tmp_path / organ / "sub").mkdir(parents=True)
        for k, v in enumerate(values):
            (tmp_path / organ / ("sub" if k else "") / f"img{k}.png").write_bytes(png(v))
    (tmp_path / "README.txt").write_text("ignored")
    (tmp_path / "top.png").write_bytes(png())  # files in the root are ignored
    return tmp_path


def test_folder_tree(tree: Path) -> None:
    m = load_manifest(str(tree))
    names = [TAX.name(i) for i in m.organ]
    assert names == ["breast", "breast", "liver", "unknown"]
    assert m.paths[0] == str(tree / "breast" / "img0.png") and m.paths[1].endswith("sub/img1.png")
    assert m.label.tolist() == [-1] * 4 and m.probe == ["unknown"] * 4
    assert m.frame.tolist() == [-1] * 4


def test_folder_outside_the_taxonomy_is_named(tree: Path) -> None:
    (tree / "brest").mkdir()
    with pytest.raises(DataError, match=r"'brest' \(did you mean 'breast'\?\)"):
        load_manifest(str(tree))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


ROWS = [
    {"path": "a.png", "organ": "breast", "probe": "linear", "split": "train", "label": "malignant",
     "patient_id": "p1"},
    {"path": "img/b.png", "organ": "", "probe": "curvilinear", "split": "val", "label": ""},
    {"path": "ABS", "organ": "Thyroid", "probe": "", "split": "train", "label": "benign",
     "patient_id": "p2"},
]  # fmt: skip


def _check_rows(m, base: str) -> None:
    assert [TAX.name(i) for i in m.organ] == ["breast", "unknown", "thyroid"]
    assert m.probe == ["linear", "convex", "unknown"]
    assert m.split == ["train", "val", "train"] and m.patient_id == ["p1", "", "p2"]
    assert m.classes == ["benign", "malignant"] and m.label.tolist() == [1, -1, 0]
    assert m.paths[:2] == [f"{base}/a.png", f"{base}/img/b.png"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats(tmp_path: Path, fmt: str) -> None:
    rows = [dict(r) for r in ROWS]
    rows[2]["path"] = str(tmp_path / "elsewhere" / "c.png")
    source = tmp_path / f"m.{fmt}"
    columns = ["Path", "organ", "probe", "split", "label", "patient_id"]  # header case ignored
    if fmt == "csv":
        write_csv(source, [{"Path": r.pop("path"), **r} for r in rows], columns)
    elif fmt == "jsonl":
        source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    else:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.Table.from_pylist([{c: r.get(c, "") for c in ROWS[0]} for r in rows]),
                       source)  # fmt: skip
    m = load_manifest(str(source))
    _check_rows(m, str(tmp_path))
    assert m.paths[2] == str(tmp_path / "elsewhere" / "c.png")
    assert len(m.with_split("train")) == 2
    with pytest.raises(DataError, match="splits present: 'train', 'val'"):
        m.with_split("test")


def test_row_with_more_fields_than_the_header_is_named(tmp_path: Path) -> None:
    # an unquoted comma inside a field shifts the row: its values must not be dropped silently
    (tmp_path / "m.csv").write_text("path,organ\na.png,liver\nb,c.png,liver\n")
    with pytest.raises(DataError, match=r"m.csv: row 2 has 3 fields, the header 2: extra "
                                        r"values \['liver'\]"):
        load_manifest(str(tmp_path / "m.csv"))


def test_integer_labels_stay_integers(tmp_path: Path) -> None:
    write_csv(tmp_path / "m.csv", [{"path": "a.png", "label": 3}, {"path": "b.png"}], ["path", "label"])
    m = load_manifest(str(tmp_path / "m.csv"))
    assert m.label.tolist() == [3, -1] and m.classes == []


def test_depth_column_is_read_and_checked(tmp_path: Path) -> None:
    rows = [{"path": "a.png", "depth_cm": 4.5}, {"path": "b.png"}, {"path": "c.png", "depth_cm": 12}]
    write_csv(tmp_path / "m.csv", rows, ["path", "depth_cm"])
    m = load_manifest(str(tmp_path / "m.csv"))
    assert m.depth_cm[0] == 4.5 and np.isnan(m.depth_cm[1]) and m.depth_cm[2] == 12
    assert m.select([2, 0]).depth_cm.tolist() == [12.0, 4.5]
    assert m.row(0)["depth_cm"] == 4.5
    write_csv(tmp_path / "n.csv", [{"path": "a.png"}], ["path"])
    assert np.isnan(load_manifest(str(tmp_path / "n.csv")).row(0)["depth_cm"])  # no column
    bad = [{"path": "a.png", "depth_cm": "deep"}, {"path": "b.png", "depth_cm": 3},
           {"path": "c.png", "depth_cm": -1}, {"path": "d.png", "depth_cm": "inf"}]
    write_csv(tmp_path / "b.csv", bad, ["path", "depth_cm"])
    with pytest.raises(DataError, match=r"b\.csv: depth_cm must be a positive number .* rows "
                                        r"1, 3, 4 \(first: 'deep'\)"):
        load_manifest(str(tmp_path / "b.csv"))


def test_label_errors_name_every_row(tmp_path: Path) -> None:
    rows = [{"path": f"{k}.png", "organ": o} for k, o in
            enumerate(["breast", "brest", "liver", "brest", "lung", "kidneys", ""])]  # fmt: skip
    write_csv(tmp_path / "m.csv", rows, ["path", "organ"])
    with pytest.raises(DataError) as info:
        load_manifest(str(tmp_path / "m.csv"))
    msg = str(info.value)
    assert "unknown organ 'brest' (did you mean 'breast'?) in rows 2, 4" in msg
    assert "unknown organ 'kidneys' (did you mean 'kidney'?) in row 6" in msg
    assert "m.csv" in msg


def test_bad_probe_and_missing_path_column(tmp_path: Path) -> None:
    write_csv(tmp_path / "p.csv", [{"path": "a.png", "probe": "endocavity"}], ["path", "probe"])
    with pytest.raises(DataError, match="unknown probe 'endocavity' in row 1"):
        load_manifest(str(tmp_path / "p.csv"))
    with pytest.raises(DataError) as info:
        load_manifest(str(tmp_path / "p.csv"))
    assert "taxonomy.organs" not in str(info.value)  # the advice is about probes only
    assert "write the probe as one of linear, convex, phased, unknown" in str(info.value)
    write_csv(tmp_path / "q.csv", [{"file": "a.png"}], ["file"])
    with pytest.raises(DataError, match="'path' column"):
        load_manifest(str(tmp_path / "q.csv"))
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(str(tmp_path / "missing.csv"))
    (tmp_path / "m.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="unknown manifest format '.xlsx'"):
        load_manifest(str(tmp_path / "m.xlsx"))


@pytest.mark.parametrize(
    ("path", "base", "expected"),
    [("a/b.png", "/data/set", "/data/set/a/b.png"), ("../x.png", "/data/set", "/data/x.png"),
     ("/abs/x.png", "/data", "/abs/x.png"), ("s3://b/k.png", "/data", "s3://b/k.png"),
     ("a.png", "s3://bucket/dir", "s3://bucket/dir/a.png"),
     ("/k/a.png", "s3://bucket/dir", "s3://k/a.png"),
     ("a.png", "memory://root", "memory:///root/a.png"),
     ("../b/a.png", "memory:///r/m", "memory:///r/b/a.png")],
)  # fmt: skip
def test_resolve_path(path: str, base: str, expected: str) -> None:
    assert resolve_path(path, base) == expected


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"/arlkit-test-{uuid.uuid4().hex}"
    yield fs, root
    fs.rm(root, recursive=True)


def test_memory_filesystem_manifest_and_dataset(memfs) -> None:
    fs, root = memfs
    fs.pipe(f"{root}/imgs/a.png", png(90))
    fs.pipe(f"{root}/other/b.png", png(180, (30, 30)))
    fs.pipe(f"{root}/m.jsonl", (json.dumps({"path": "imgs/a.png", "organ": "kidney"}) + "\n"
                                + json.dumps({"path": f"{root}/other/b.png"}) + "\n").encode())  # fmt: skip
    ds = ManifestDataset(f"memory://{root}/m.jsonl", size=32)
    assert ds.manifest.paths == [f"memory://{root}/imgs/a.png", f"memory://{root}/other/b.png"]
    a, b = ds[0], ds[1]
    assert a["valid"] and a["organ"] == TAX.index("kidney") and b["organ"] == TAX.unknown_index
    assert a["image"].shape == (1, 32, 32) and a["fov"].shape == (1, 32, 32)
    # the detected scan is the speckle rectangle: cropped to it, it fills the width
    assert a["image"][0, 16].min() > 20 / 255 and a["fov"][0, 16].all()


def test_memory_folder_tree(memfs) -> None:
    fs, root = memfs
    fs.pipe(f"{root}/lung/x.png", png())
    fs.pipe(f"{root}/lung/deep/y.png", png())
    m = load_manifest(f"memory://{root}")
    assert len(m) == 2 and set(m.organ.tolist()) == {TAX.index("lung")}
    assert all(p.startswith("memory://") for p in m.paths)
    assert ManifestDataset(m, size=16)[1]["valid"]


def test_dataset_sample_contract(tree: Path) -> None:
    ds = ManifestDataset(str(tree), size=48)
    s = ds[0]
    assert set(s) == {"image", "fov", "organ", "label", "probe", "id", "patient_id", "valid", "frame",
                      "depth_cm"}
    assert s["image"].dtype == torch.float32 and s["fov"].dtype == torch.bool
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["id"] == str(tree / "breast" / "img0.png") and s["label"] == -1
    assert list(ds.organ_indices) == [0, 0, TAX.index("liver"), TAX.unknown_index]
    assert ds[-1]["organ"] == TAX.unknown_index
    with pytest.raises(IndexError):
        ds[4]


def test_dicom_cine_becomes_frames(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    (tmp_path / "cardiac").mkdir()
    (tmp_path / "cardiac" / "cine.dcm").write_bytes(dicom_cine(3))
    (tmp_path / "cardiac" / "still.png").write_bytes(png(77))
    ds = ManifestDataset(str(tmp_path), size=16, detect_fov=False)
    assert ds.manifest.frame.tolist() == [0, 1, 2, -1]
    ids = [ds[i]["id"] for i in range(4)]
    assert ids[:3] == [f"{tmp_path}/cardiac/cine.dcm#frame={k}" for k in range(3)]
    means = [float(ds[i]["image"].max()) for i in range(3)]
    assert means == pytest.approx([40 / 255, 80 / 255, 120 / 255], abs=1e-3)
    flat = ManifestDataset(str(tmp_path), size=16, expand_frames=False)
    assert len(flat) == 2


def test_frame_column_is_respected(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    (tmp_path / "c.dcm").write_bytes(dicom_cine(4))
    write_csv(tmp_path / "m.csv", [{"path": "c.dcm", "frame": 2}], ["path", "frame"])
    ds = ManifestDataset(str(tmp_path / "m.csv"), size=8, detect_fov=False)
    assert len(ds) == 1 and ds[0]["image"].max() == pytest.approx(120 / 255, abs=1e-3)


def test_masks_follow_their_images(tmp_path: Path) -> None:
    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 20:40] = 1
    Image.fromarray(labels).save(tmp_path / "m1.png")
    (tmp_path / "a.png").write_bytes(png(120))
    (tmp_path / "b.png").write_bytes(png(60))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small.png")
    write_csv(tmp_path / "m.csv", [{"path": "a.png", "mask": "m1.png"}, {"path": "b.png"},
                                   {"path": "b.png", "mask": "small.png"}], ["path", "mask"])  # fmt: skip
    ds = ManifestDataset(str(tmp_path / "m.csv"), size=50)
    first = ds[0]["mask"]
    assert first.shape == (50, 50) and first.dtype == torch.int64
    # crop (5:35, 8:52) → 30×44 scaled to 34×50, padded 8 rows on top: lesion rows 5..25 of the crop
    assert first[8 + 6 : 8 + 28, 14:36].float().mean() > 0.9 and first.sum() < 0.3 * 50 * 50
    assert (ds[1]["mask"] == NO_MASK).all()
    bad = ds[2]
    assert not bad["valid"] and "mask is (5, 5)" in bad["error"]


# ------------------------------------------------------------------ bad files, collate, log


def test_bad_files_are_invalid_samples_and_dropped_by_collate(tree: Path) -> None:
    good = (tree / "breast" / "img0.png").read_bytes()
    (tree / "breast" / "cut.png").write_bytes(good[: len(good) // 2])
    (tree / "breast" / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(2000))
    ds = ManifestDataset(str(tree), size=24)
    samples = [ds[i] for i in range(len(ds))]
    invalid = [s for s in samples if not s["valid"]]
    assert {Path(s["id"]).name for s in invalid} == {"cut.png", "noise.dcm"}
    assert all("image" not in s and s["error"] for s in invalid)
    batch = collate(samples)
    assert batch["n"] == 4 and batch["image"].shape == (4, 1, 24, 24)
    assert batch["id"] == [s["id"] for s in samples if s["valid"]]  # no substitutes
    assert sorted(Path(p).name for p, _ in batch["bad_files"]) == ["cut.png", "noise.dcm"]
    assert "truncated" in dict(batch["bad_files"])[str(tree / "breast" / "cut.png")]
    assert batch["organ"].dtype == torch.int64 and batch["probe"] == ["unknown"] * 4


def test_missing_file_is_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    write_csv(tmp_path / "m.csv", [{"path": "a.png"}, {"path": "gone.png"}], ["path"])
    ds = ManifestDataset(str(tmp_path / "m.csv"), size=16)
    assert ds[0]["valid"] and not ds[1]["valid"]
    assert ds[1]["id"] == str(tmp_path / "gone.png") and "FileNotFoundError" in ds[1]["error"]


def test_collate_all_bad_and_mismatched() -> None:
    bad = {"valid": False, "id": "x", "error": "boom"}
    assert collate([bad]) == {"n": 0, "bad_files": [("x", "boom")]}
    a = {"image": torch.zeros(1, 4, 4), "id": "a"}
    with pytest.raises(DataError, match="shape"):
        collate([a, {"image": torch.zeros(1, 5, 5), "id": "b"}])
    with pytest.raises(DataError, match="keys"):
        collate([a, {"id": "b"}])
    batch = collate([{**a, "w": 0.5, "ok": True}, {**a, "w": 1, "ok": False}])
    assert batch["w"].dtype == torch.float32 and batch["ok"].tolist() == [True, False]


def test_bad_file_log_writes_and_stops(tmp_path: Path) -> None:
    log = BadFileLog(0.01, run_dir=str(tmp_path / "run"), min_samples=100)
    log.record(60, [("a.png", "truncated")])
    log.record(0, [])
    assert log.seen == 61 and log.num_bad == 1  # 1 of 61, but ≤ 1 % of the first 100
    lines = (tmp_path / "run" / "bad_files.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"path": "a.png", "reason": "truncated"}]
    with pytest.raises(DataError) as info:
        log.record(30, [("b.png", "OSError: x")])  # 2 of 92: more than 1 % of 100
    msg = str(info.value)
    assert "2 of 92 samples" in msg and "bad_files.jsonl" in msg and "a.png: truncated" in msg
    assert len((tmp_path / "run" / "bad_files.jsonl").read_text().splitlines()) == 2


def test_bad_file_log_fraction_after_min_samples_and_memory_fs(memfs) -> None:
    fs, root = memfs
    log = BadFileLog(0.05, run_dir=f"memory://{root}/run", min_samples=10)
    for k in range(4):
        log.record(95, [(f"{k}.png", "bad")])  # 4 of 384 ≈ 1 %: fine
    assert log.fraction == pytest.approx(4 / 384)
    assert len(fs.cat(f"{root}/run/bad_files.jsonl").decode().splitlines()) == 4
    state = log.state_dict()
    resumed = BadFileLog(0.05, min_samples=10)
    resumed.load_state_dict(state)
    with pytest.raises(DataError):
        resumed.record(0, [(f"x{k}", "bad") for k in range(20)])
    strict = BadFileLog(0.0)
    with pytest.raises(DataError):
        strict.record(1000, [("one.png", "bad")])
    with pytest.raises(ConfigError):
        BadFileLog(1.5)


def test_registered_manifest_dataset(tree: Path) -> None:
    entry = default_registries.datasets.get("manifest")
    ds = entry.build({"path": str(tree), "size": 32, "max_bad_fraction": 0.05}, taxonomy=TAX)
    assert isinstance(ds, ManifestDataset) and ds.max_bad_fraction == 0.05 and len(ds) == 4
    with pytest.raises(ValueError):
        entry.validate_params({"path": str(tree), "sise": 32})


def test_string_column_behaves_like_a_list() -> None:
    import pickle

    from arlkit.data.columns import StringColumn

    values = ["a.png", None, "", "ünïcode/ß.png", "last"]
    col = StringColumn(values)
    assert len(col) == 5 and list(col) == values and col == values and col != values[:4]
    assert col[-1] == "last" and col[1] is None and col[1:3] == [None, ""]
    assert col.take([4, 0, 0]) == ["last", "a.png", "a.png"]
    assert pickle.loads(pickle.dumps(col)) == values
    with pytest.raises(IndexError):
        col[5]
    assert StringColumn([]) == [] and StringColumn(["x"])._none is None


def test_a_misspelt_column_is_an_error_not_silently_unknown(tmp_path):
    (tmp_path / "m.csv").write_text("path,Organ_Name,age\na.png,liver,40\n")
    with pytest.raises(DataError, match=r"column 'organ_name' is not one arlkit reads; did you "
                                        r"mean 'organ'\?"):
        load_manifest(str(tmp_path / "m.csv"))
    # other metadata columns stay allowed
    (tmp_path / "ok.csv").write_text("path,organ,age,sex\na.png,liver,40,f\n")
    assert load_manifest(str(tmp_path / "ok.csv")).organ.tolist() == [
        TAX.index("liver", "organ")]
