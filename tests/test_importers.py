"""PI-CAI and CheXpert importers against tiny real trees (SimpleITK .mha/.nii.gz, PIL JPEGs)."""

from __future__ import annotations

import csv
import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medti.cli import app
from medti.data.dataset import Dataset, DatasetError, load_image, load_mask, read_manifest
from medti.data.importers import (
    ChexpertImportConfig,
    PicaiImportConfig,
    import_chexpert,
    import_picai,
)
from medti.data.pseudonym import case_pseudonym, load_salt, pseudonymise
from medti.io import OutputError

SALT = "importer-test-salt"
SIZE = 64

# ----------------------------------------------------------------------------- PI-CAI tree
# T2W: 64 x 64 x 12 voxels at (x, y, z) = (1, 1, 3.6) mm, origin 0.  ADC/HBV: 32 x 32 x 12 at
# (2, 2, 3.6) mm covering the same box, so they must be resampled onto the T2W grid.
T2W_SPACING = (1.0, 1.0, 3.6)
DWI_SPACING = (2.0, 2.0, 3.6)
NZ = 12
REF = 200.0  # T2W reference stripe (x < 8): the volume maximum, so R = value / REF


def t2w_ramp(z):
    """T2W value in the left half (8 <= x < 32) on original slice z: encodes the slice."""
    return 10.0 + 10.0 * z


# Lesion squares on original T2W slices (z: (y0, y1, x0, x1)); slice 6 is the largest.
LESION = {5: (20, 24, 20, 24), 6: (36, 46, 40, 50), 7: (16, 22, 44, 50)}
GLAND_Z = range(2, 10)  # gland on original slices 2..9

# study -> (has lesion, has gland mask, has lesion file)
STUDIES = {
    "10001_1000001": (True, True, True),
    "10001_1000002": (False, True, True),
    "10002_1000003": (False, True, True),
    "10003_1000004": (True, False, True),
    "10004_1000005": (False, False, True),  # skipped: no lesion, no gland
    "10005_1000006": (False, True, False),  # skipped: no lesion delineation at all
}
ORIGINAL_IDS = sorted({p for k in STUDIES for p in k.split("_")})


def _write(arr: np.ndarray, spacing, origin, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def _lesion_volume(lesion: dict) -> np.ndarray:
    m = np.zeros((NZ, 64, 64), np.uint8)
    for z, (y0, y1, x0, x1) in lesion.items():
        m[z, y0:y1, x0:x1] = 2  # an ISUP label, not just 1
    return m


def build_picai(root: Path) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    yy, xx = np.mgrid[0:32, 0:32] * 2.0 + 0.5  # physical centres of the 2 mm grid
    for idx, (key, (has_lesion, has_gland, has_lesion_file)) in enumerate(STUDIES.items()):
        patient = key.split("_")[0]
        d = images / "fold0" / patient
        t2w = np.zeros((NZ, 64, 64), np.float32)
        for z in range(NZ):
            t2w[z, :, 8:32] = t2w_ramp(z)
        t2w[:, :, :8] = REF
        t2w[:, 60:, 60:] = 3.0 * (idx + 1)  # a per-study mark: no two studies look alike
        _write(t2w, T2W_SPACING, (0.0, 0.0, 0.0), d / f"{key}_t2w.mha")
        adc = np.where(yy < 32, 1000.0, 100.0)[None].repeat(NZ, 0).astype(np.float32)
        hbv = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 12**2, 500.0, 50.0)
        hbv = hbv[None].repeat(NZ, 0).astype(np.float32)
        if has_lesion:  # the lesion: dark on ADC, bright on high-b DWI
            for z, (y0, y1, x0, x1) in LESION.items():
                adc[z, y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = 10.0
                hbv[z, y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = 1000.0
        _write(adc, DWI_SPACING, (0.5, 0.5, 0.0), d / f"{key}_adc.mha")
        _write(hbv, DWI_SPACING, (0.5, 0.5, 0.0), d / f"{key}_hbv.mha")
        (d / f"{key}_sag.mha").write_bytes(b"not an image: other sequences are ignored")
        (d / f"{key}_cor.mha").write_bytes(b"not an image either")
        lesion = _lesion_volume(LESION if has_lesion else {})
        if has_lesion_file:
            _write(lesion, T2W_SPACING, (0.0, 0.0, 0.0),
                   labels / "csPCa_lesion_delineations/human_expert/resampled" / f"{key}.nii.gz")
            # A larger, wrong AI lesion elsewhere: the human-expert file must win.
            ai = _lesion_volume({9: (2, 22, 2, 22)})
            _write(ai, T2W_SPACING, (0.0, 0.0, 0.0),
                   labels / "csPCa_lesion_delineations/AI/Bosma22a" / f"{key}.nii.gz")
        if has_gland:
            g = np.zeros((NZ, 64, 64), np.uint8)
            gy, gx = np.mgrid[0:64, 0:64]
            disk = (gy - 32) ** 2 + (gx - 32) ** 2 < 14**2
            for z in GLAND_Z:
                g[z][disk] = 1
            _write(g, T2W_SPACING, (0.0, 0.0, 0.0),
                   labels / "anatomical_delineations/whole_gland/AI/Bosma22b" / f"{key}.nii.gz")
    return images, labels


def out_pixel(mm: float) -> float:
    """Continuous output-pixel coordinate of an in-plane position (mm) on the T2W grid.

    T2W (64 mm) resampled to 0.5 mm is 128 voxels, centred in 300, then scaled to SIZE.
    """
    return (86 + 2 * mm) * SIZE / 300


def z_from_red(red: int) -> float:
    """Physical z (mm) of the slice an output image came from, read from its T2W ramp."""
    value = red / 255 * REF
    return (value - 10.0) / 10.0 * T2W_SPACING[2]


def png_chunks(path: Path) -> set[bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, kinds = 8, set()
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        kinds.add(data[i + 4 : i + 8])
        i += 12 + n
    return kinds


def assert_no_identifiers(out: Path, ids) -> None:
    for p in out.rglob("*"):
        for s in ids:
            assert s not in p.name, p
    for name in ("manifest.csv", "dataset.json"):
        text = (out / name).read_text()
        if name == "manifest.csv":  # sha256 is a hash of pixels, not derived from any id
            text = "\n".join(
                ",".join(v for k, v in r.items() if k != "sha256")
                for r in csv.DictReader(io.StringIO(text))
            ) + "\n" + text.splitlines()[0]
        for s in ids:
            assert s not in text, (name, s)
    for p in out.rglob("*.png"):  # no text chunks (no metadata) in any written image
        assert png_chunks(p) <= {b"IHDR", b"IDAT", b"IEND"}, p


@pytest.fixture(scope="module")
def picai_tree(tmp_path_factory):
    return build_picai(tmp_path_factory.mktemp("picai"))


@pytest.fixture(scope="module")
def picai_out(picai_tree, tmp_path_factory):
    images, labels = picai_tree
    out = tmp_path_factory.mktemp("picai_out") / "ds"
    res = import_picai(PicaiImportConfig(images=images, labels=labels, out=out, size=SIZE, salt=SALT))
    return res, out


def _row_of(rows, key):
    cid = case_pseudonym(key, load_salt(SALT))
    (row,) = [r for r in rows if r["case_id"] == cid]
    return row


def test_picai_labels_skips_and_format(picai_out):
    res, out = picai_out
    ds = Dataset(out)
    assert ds.info.modality == "prostate_mri"
    assert ds.info.channels == ["T2W", "ADC", "DWI"]
    assert ds.info.findings == ["csPCa"] and ds.info.source == "picai"
    assert ds.info.image_size == [SIZE, SIZE]
    assert res.n == len(ds) == 4
    assert res.skipped == 2 and sum(res.skip_reasons.values()) == 2
    assert res.counts["csPCa=1"] == 2 and res.counts["csPCa=0"] == 2
    expected = {k: int(v[0]) for k, v in STUDIES.items() if k not in ("10004_1000005", "10005_1000006")}
    for key, label in expected.items():
        row = _row_of(ds.rows, key)
        assert int(row["csPCa"]) == label
        assert (row["mask"] != "") == bool(label)  # masks for positives only
        assert row["caption"] == "axial prostate mri"
        img = load_image(out / row["path"])
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    summary = res.summary()
    assert "skipped 2" in summary and "no lesion and no whole-gland mask" in summary
    for s in ORIGINAL_IDS:
        assert s not in summary


def test_picai_positive_is_largest_lesion_slice_and_mask_matches(picai_out):
    _, out = picai_out
    rows = read_manifest(out)
    for key in ("10001_1000001", "10003_1000004"):
        row = _row_of(rows, key)
        mask = load_mask(out / row["mask"])
        assert mask.shape == (SIZE, SIZE)
        y0, y1, x0, x1 = LESION[6]  # the largest square, not slice 5/7 and not the AI one
        ys, xs = np.nonzero(mask)
        assert abs(ys.mean() + 0.5 - (out_pixel(y0) + out_pixel(y1)) / 2) < 1.0
        assert abs(xs.mean() + 0.5 - (out_pixel(x0) + out_pixel(x1)) / 2) < 1.0
        expected_area = (out_pixel(y1) - out_pixel(y0)) * (out_pixel(x1) - out_pixel(x0))
        assert 0.6 * expected_area < mask.sum() < 1.5 * expected_area
        # The mask sits on the lesion in the image: bright on HBV (B), dark on ADC (G).
        img = load_image(out / row["path"]).astype(int)
        side = np.zeros_like(mask)  # pixels left and right of the lesion, same rows
        side[ys.min() : ys.max() + 1, xs.min() - 3 : xs.max() + 4] = True
        side &= ~mask
        assert img[..., 2][mask].mean() > img[..., 2][side].mean() + 60
        assert img[..., 1][mask].mean() < 0.6 * img[..., 1][side].mean()
        # The image is the same slice: T2W ramp read back at the centre of the ramp band.
        red = load_image(out / row["path"])[int(out_pixel(32)), int(out_pixel(20)), 0]
        assert abs(z_from_red(int(red)) - 6 * T2W_SPACING[2]) <= 1.5 + 0.5 * T2W_SPACING[2]
        # ...and the 3 mm grid slice nearest the lesion's largest slice, not a neighbour.
        assert abs(z_from_red(int(red)) - 21.0) < 1.5


def test_picai_negative_is_median_gland_slice(picai_out):
    _, out = picai_out
    rows = read_manifest(out)
    gland_mid = (GLAND_Z[0] + GLAND_Z[-1]) / 2 * T2W_SPACING[2]
    for key in ("10001_1000002", "10002_1000003"):
        row = _row_of(rows, key)
        red = load_image(out / row["path"])[int(out_pixel(32)), int(out_pixel(20)), 0]
        assert abs(z_from_red(int(red)) - gland_mid) <= 3.0


def test_picai_channels_are_t2w_adc_hbv(picai_out):
    _, out = picai_out
    row = _row_of(read_manifest(out), "10002_1000003")
    img = load_image(out / row["path"]).astype(int)
    top, mid, bottom = int(out_pixel(16)), int(out_pixel(32)), int(out_pixel(48))
    left, ramp, right = int(out_pixel(4)), int(out_pixel(20)), int(out_pixel(48))
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    # R = T2W: reference stripe (max) > ramp > right half (0); no top/bottom pattern.
    assert r[mid, left] > 240 and r[mid, right] < 10 and 20 < r[mid, ramp] < 200
    assert abs(r[top, ramp] - r[bottom, ramp]) < 5
    # G = ADC: top half bright, bottom dim; no left/right pattern.
    assert g[top, mid] > 200 and g[bottom, mid] < 60
    assert abs(g[top, ramp] - g[top, right]) < 10
    # B = HBV: bright disk in the centre.
    assert b[mid, mid] > 200 and b[top - 6, left] < 60
    # outside the scanned box: padding is black in every channel.
    assert img[1, 1].max() == 0


def test_picai_patient_level_split_and_pseudonyms(picai_out, picai_tree, tmp_path):
    res, out = picai_out
    rows = read_manifest(out)
    salt = load_salt(SALT)
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert set(by_patient) == {pseudonymise(p, salt) for p in ("10001", "10002", "10003")}
    a, b = _row_of(rows, "10001_1000001"), _row_of(rows, "10001_1000002")
    assert a["patient_id"] == b["patient_id"] and a["split"] == b["split"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}  # 3 patients -> 1/1/1
    assert_no_identifiers(out, ORIGINAL_IDS)

    images, labels = picai_tree
    again = tmp_path / "again"
    import_picai(PicaiImportConfig(images=images, labels=labels, out=again, size=SIZE, salt=SALT))
    assert (again / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()
    other = tmp_path / "other"
    import_picai(PicaiImportConfig(images=images, labels=labels, out=other, size=SIZE, salt="another"))
    rows2 = read_manifest(other)
    assert not {r["case_id"] for r in rows} & {r["case_id"] for r in rows2}
    assert not {r["patient_id"] for r in rows} & {r["patient_id"] for r in rows2}
    assert sorted(r["sha256"] for r in rows) == sorted(r["sha256"] for r in rows2)


def _break_missing(d: Path):
    (d / "fold0/10002/10002_1000003_adc.mha").unlink()
    return "fold0/10002/10002_1000003_adc.mha", "missing ADC"


def _break_unreadable(d: Path):
    (d / "fold0/10002/10002_1000003_t2w.mha").write_bytes(b"\x00garbage")
    return "fold0/10002/10002_1000003_t2w.mha", "not a readable image"


def _rewrite(d: Path, name: str, fn):
    import SimpleITK as sitk

    p = d / "fold0/10002" / name
    img = sitk.ReadImage(str(p))
    arr = fn(sitk.GetArrayFromImage(img))
    _write(arr, img.GetSpacing(), img.GetOrigin(), p)
    return f"fold0/10002/{name}"


def _break_nan(d: Path):
    def f(a):
        a[3, 4, 5] = np.nan
        return a

    return _rewrite(d, "10002_1000003_hbv.mha", f), "NaN"


def _break_constant(d: Path):
    return _rewrite(d, "10002_1000003_adc.mha", lambda a: np.full_like(a, 7.0)), "constant"


@pytest.mark.parametrize("breaker", [_break_missing, _break_unreadable, _break_nan, _break_constant])
def test_picai_bad_input_names_file_and_writes_nothing(picai_tree, tmp_path, breaker):
    images = tmp_path / "images"
    shutil.copytree(picai_tree[0], images)
    rel, rule = breaker(images)
    out = tmp_path / "out" / "ds"
    with pytest.raises(DatasetError) as ei:
        import_picai(
            PicaiImportConfig(images=images, labels=picai_tree[1], out=out, size=SIZE, salt=SALT)
        )
    msg = str(ei.value)
    assert rel in msg and rule in msg
    assert str(images) not in msg  # relative to the input root
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))  # no temp dir left


def test_picai_error_keeps_previous_dataset(picai_tree, picai_out, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(picai_out[1], out)
    before = (out / "manifest.csv").read_bytes()
    images = tmp_path / "images"
    shutil.copytree(picai_tree[0], images)
    _break_unreadable(images)
    with pytest.raises(DatasetError):
        import_picai(
            PicaiImportConfig(images=images, labels=picai_tree[1], out=out, size=SIZE, salt=SALT, overwrite=True)
        )
    assert (out / "manifest.csv").read_bytes() == before
    with pytest.raises(OutputError, match="already exists"):
        import_picai(PicaiImportConfig(images=picai_tree[0], labels=picai_tree[1], out=out, size=SIZE, salt=SALT))


def test_picai_empty_roots_are_errors(tmp_path, picai_tree):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no <patient>"):
        import_picai(PicaiImportConfig(images=tmp_path / "empty", labels=picai_tree[1], out=tmp_path / "o"))
    with pytest.raises(DatasetError, match="csPCa_lesion_delineations"):
        import_picai(PicaiImportConfig(images=picai_tree[0], labels=tmp_path / "empty", out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- CheXpert tree
HEADER = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]
DS = "CheXpert-v1.0-small"
# (Path below DS, view, {column: value}, expected (pleural_effusion, pneumonia, cardiomegaly)
#  under ignore / positive / negative; None = dropped)
CXR_ROWS = [
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal",
     {"Pleural Effusion": "1.0", "Pneumonia": "", "Cardiomegaly": "0.0"}, [(1, 0, 0)] * 3),
    ("train/patient00001/study1/view2_lateral.jpg", "Lateral",  # no file: never read
     {"Pleural Effusion": "1.0"}, [None] * 3),
    ("train/patient00002/study1/view1_frontal.jpg", "Frontal",
     {"Pleural Effusion": "0.0", "Pneumonia": "1.0", "Cardiomegaly": "1"}, [(0, 1, 1)] * 3),
    ("train/patient00003/study1/view1_frontal.jpg", "Frontal", {}, [(0, 0, 0)] * 3),
    ("train/patient00003/study2/view1_frontal.jpg", "Frontal",
     {"Pleural Effusion": "1.0", "Pneumonia": "1.0", "Cardiomegaly": "0.0"}, [(1, 1, 0)] * 3),
    ("train/patient00004/study1/view1_frontal.jpg", "Frontal",
     {"Pleural Effusion": "1.0", "Pneumonia": "-1.0", "Cardiomegaly": "0.0"},
     [None, (1, 1, 0), (1, 0, 0)]),
    ("train/patient00005/study1/view1_frontal.jpg", "Frontal",  # -1 only in an unused column
     {"Cardiomegaly": "1.0", "Edema": "-1.0"}, [(0, 0, 1)] * 3),
]
POLICIES = ["ignore", "positive", "negative"]
CXR_IDS = ["patient0000", "study1", "view1", "frontal.jpg", "Female", "Male"]


def write_csv(path: Path, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for i, (rel, view, vals, _) in enumerate(rows):
        rec = {h: "" for h in HEADER}
        rec.update(Path=f"{DS}/{rel}", Sex="Female" if i % 2 else "Male", Age=str(60 + i))
        rec["Frontal/Lateral"], rec["AP/PA"] = view, ("AP" if view == "Frontal" else "")
        rec.update(vals)
        w.writerow([rec[h] for h in HEADER])
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_jpeg(path: Path, level: int) -> None:
    """80 x 60 (w x h) frame: white bars at x < 10 and x >= 70 that the centre crop removes."""
    from PIL import Image

    a = np.zeros((60, 80), np.uint8)
    a[:, 10:70] = np.linspace(level, level + 60, 60, dtype=np.uint8)[:, None]
    a[:, :10] = a[:, 70:] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=95)


@pytest.fixture(scope="module")
def cxr_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    for i, (rel, view, _, _) in enumerate(CXR_ROWS):
        if view == "Frontal":
            write_jpeg(root / DS / rel, 20 + 10 * i)
    write_csv(root / DS / "train.csv", CXR_ROWS)
    return root


def _cxr(tree: Path, out: Path, **kw) -> tuple:
    cfg = ChexpertImportConfig(csv=tree / DS / "train.csv", root=tree, out=out, size=SIZE, salt=SALT, **kw)
    return import_chexpert(cfg), out


@pytest.mark.parametrize("policy", POLICIES)
def test_chexpert_labels_views_and_uncertain_policy(cxr_tree, tmp_path, policy):
    res, out = _cxr(cxr_tree, tmp_path / "ds", uncertain=policy)
    ds = Dataset(out)
    assert ds.info.modality == "cxr" and ds.info.channels == ["grey", "grey", "grey"]
    assert ds.info.findings == ["pleural_effusion", "pneumonia", "cardiomegaly"]
    col = POLICIES.index(policy)
    expected = {rel: exp[col] for rel, _, _, exp in CXR_ROWS if exp[col] is not None}
    assert res.n == len(ds) == len(expected)
    salt = load_salt(SALT)
    for rel, labels in expected.items():
        (row,) = [r for r in ds.rows if r["case_id"] == case_pseudonym(rel, salt)]
        assert tuple(int(row[f]) for f in ds.info.findings) == labels
        assert row["patient_id"] == pseudonymise(rel.split("/")[1], salt)
        assert row["caption"] == "frontal chest x-ray" and row["mask"] == ""
    assert res.skip_reasons["lateral view"] == 1
    assert res.skip_reasons.get("uncertain label (U-Ignore)", 0) == (1 if policy == "ignore" else 0)
    assert_no_identifiers(out, CXR_IDS)
    info = (out / "dataset.json").read_text()
    assert "Age" not in info and "Sex" not in info and "AP/PA" not in info


def test_chexpert_images_are_grey_centre_cropped(cxr_tree, tmp_path):
    _, out = _cxr(cxr_tree, tmp_path / "ds")
    for r in read_manifest(out):
        img = load_image(out / r["path"])
        assert img.shape == (SIZE, SIZE, 3)
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        assert img.max() < 200  # the white side bars were cropped away
        assert img[-4:].mean() > img[:4].mean() + 30  # the vertical gradient is kept


def test_chexpert_patient_split_and_root_variants(cxr_tree, tmp_path):
    _, out = _cxr(cxr_tree, tmp_path / "a")
    rows = read_manifest(out)
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert len(splits) == 4  # patient00004 dropped (U-Ignore)
    # a root that already is the CheXpert-v1.0-small dir gives the same dataset
    cfg = ChexpertImportConfig(csv=cxr_tree / DS / "train.csv", root=cxr_tree / DS,
                               out=tmp_path / "b", size=SIZE, salt=SALT)
    import_chexpert(cfg)
    assert (tmp_path / "b" / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()


def _bad_csv(tree: Path, tmp: Path, rows=None, text: bytes | None = None) -> Path:
    p = tmp / "bad.csv"
    if text is not None:
        p.write_bytes(text)
    else:
        write_csv(p, rows)
    return p


@pytest.mark.parametrize(
    "case",
    ["non_utf8", "missing_column", "semicolons", "value_2", "value_yes", "bad_view", "missing_image",
     "corrupt_image", "escape", "no_patient"],
)
def test_chexpert_bad_input_names_row_and_writes_nothing(cxr_tree, tmp_path, case):
    root = cxr_tree
    rows = [list(r) for r in CXR_ROWS]
    expect: list[str]
    csv_path = None
    if case == "non_utf8":
        good = (cxr_tree / DS / "train.csv").read_bytes().split(b"\n")
        good[3] = good[3].replace(b",AP,", b",A\xe9P,")
        csv_path = _bad_csv(root, tmp_path, text=b"\n".join(good))
        expect = ["bad.csv", "UTF-8", "line 4"]
    elif case == "missing_column":
        text = (cxr_tree / DS / "train.csv").read_text().replace("Pneumonia", "Pneumonitis")
        csv_path = _bad_csv(root, tmp_path, text=text.encode())
        expect = ["bad.csv", "'Pneumonia'"]
        assert "separated" not in _error(root, csv_path, tmp_path)  # no hint for a plain missing column
    elif case == "semicolons":  # re-saved by a spreadsheet in a locale that writes ';'
        text = (cxr_tree / DS / "train.csv").read_text().replace(",", ";")
        csv_path = _bad_csv(root, tmp_path, text=text.encode())
        expect = ["bad.csv", "missing column", "split by ';'", "comma-separated"]
    elif case in ("value_2", "value_yes"):
        v = "2" if case == "value_2" else "yes"
        rows[2][2] = {**rows[2][2], "Cardiomegaly": v}
        expect = ["row 3", "line 4", "Cardiomegaly", repr(v)]
    elif case == "bad_view":
        rows[3][1] = "Oblique"
        expect = ["row 4", "Frontal/Lateral", "'Oblique'"]
    elif case in ("missing_image", "corrupt_image"):
        root = tmp_path / "root"
        shutil.copytree(cxr_tree, root)
        img = root / DS / rows[4][0]
        if case == "missing_image":
            img.unlink()
            expect = ["row 5", rows[4][0], "not found"]
        else:
            img.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
            expect = ["row 5", rows[4][0], "not a readable image"]
    elif case == "escape":
        outside = tmp_path / "outside.jpg"
        write_jpeg(outside, 50)
        rows[2][0] = "train/patient00002/../../../../outside.jpg"  # DS/ is prefixed
        expect = ["row 3", "escapes"]
    else:  # no_patient
        rows[2][0] = "train/somebody/study1/view1_frontal.jpg"
        expect = ["row 3", "patientNNNNN"]
    if csv_path is None:
        csv_path = _bad_csv(root, tmp_path, rows)
    out = tmp_path / "out" / "ds"
    message = _error(root, csv_path, tmp_path)
    for s in expect:
        assert s in message, (s, message)
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))


def _error(root, csv_path, tmp_path) -> str:
    cfg = ChexpertImportConfig(csv=csv_path, root=root, out=tmp_path / "out" / "ds", size=SIZE, salt=SALT)
    with pytest.raises(DatasetError) as ei:
        import_chexpert(cfg)
    return str(ei.value)


def test_chexpert_rejects_unknown_policy(cxr_tree, tmp_path):
    with pytest.raises(DatasetError, match="uncertain"):
        _cxr(cxr_tree, tmp_path / "ds", uncertain="maybe")
    assert not (tmp_path / "ds").exists()


# ----------------------------------------------------------------------------- CLI
def test_cli_import_picai(picai_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTI_SALT", SALT)
    out = tmp_path / "ds"
    args = ["data", "import", "picai", "--images", str(picai_tree[0]), "--labels",
            str(picai_tree[1]), "--out", str(out), "--size", str(SIZE)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "imported 4" in r.output and "skipped 2" in r.output
    assert len(read_manifest(out)) == 4
    for s in ORIGINAL_IDS:
        assert s not in r.output
    r = CliRunner().invoke(app, args)  # exists, no --force
    assert r.exit_code == 1 and "already exists" in r.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


def test_cli_import_chexpert(cxr_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTI_SALT", SALT)
    out = tmp_path / "ds"
    base = ["data", "import", "chexpert", "--csv", str(cxr_tree / DS / "train.csv"), "--root",
            str(cxr_tree), "--size", str(SIZE)]
    r = CliRunner().invoke(app, [*base, "--out", str(out), "--uncertain", "positive"])
    assert r.exit_code == 0, r.output
    assert "imported 6" in r.output and "patient0" not in r.output
    bad = tmp_path / "bad.csv"
    rows = [list(x) for x in CXR_ROWS]
    rows[0][2] = {"Pneumonia": "yes"}
    write_csv(bad, rows)
    r = CliRunner().invoke(app, ["data", "import", "chexpert", "--csv", str(bad), "--root",
                                 str(cxr_tree), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "row 1" in r.output and "'yes'" in r.output
    assert not (tmp_path / "x").exists()
