"""The generic folder reader (data.layout=folder): normal/ and abnormal/ folders, masks optional."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.data import LAYOUTS, DatasetError, get_reader
from jaxflow_ad.data import folder as folder_reader

from .fixtures import H, W, _image, _mask, mask_array

N_NORMAL = 5


def write_folder(base, *, normal="normal", abnormal="abnormal", masks="masks", normal_test=None, seed=0):
    """Write a category folder ``base`` as anomalib's Folder dataset would have it and return it:
    ``normal/good_000.png ...`` (N_NORMAL), ``abnormal/bad_000.png, bad_001.jpg``, and unless
    ``masks`` is None ``masks/bad_000.png`` (same name) and ``masks/bad_001_mask.png`` (suffixed)
    with 0/255 masks ``mask_array(i)``; ``normal_test/`` with 2 images if named."""
    rng = np.random.default_rng(seed)
    for d in (normal, abnormal):
        (base / d).mkdir(parents=True)
    for i in range(N_NORMAL):
        _image(rng).save(base / normal / f"good_{i:03d}.png")
    _image(rng).save(base / abnormal / "bad_000.png")
    _image(rng).save(base / abnormal / "bad_001.jpg", quality=95)
    if masks is not None:
        (base / masks).mkdir(parents=True)
        _mask(0).save(base / masks / "bad_000.png")
        _mask(1).save(base / masks / "bad_001_mask.png")
    if normal_test is not None:
        (base / normal_test).mkdir(parents=True)
        for i in range(2):
            _image(rng).save(base / normal_test / f"ok_{i:03d}.png")
    return base


@pytest.fixture
def root(tmp_path):
    write_folder(tmp_path / "parts" / "screws")
    return tmp_path / "parts"


def _match(path) -> str:
    return re.escape(str(path))


def _names(split):
    return [p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in split.paths]


def test_without_masks(root):
    train = folder_reader.load_split(root, "screws", "train", None)
    test = folder_reader.load_split(root, "screws", "test", None)
    assert not train.has_masks and not test.has_masks
    # round(5 * 0.2) = 1 normal image held out of train for the test split.
    assert len(train) == N_NORMAL - 1 and train.labels.tolist() == [0] * 4 and train.defect_types == ["good"] * 4
    assert test.labels.tolist() == [0, 1, 1] and test.defect_types == ["good", "abnormal", "abnormal"]
    assert _names(test)[1:] == ["abnormal/bad_000.png", "abnormal/bad_001.jpg"]
    normals = {f"normal/good_{i:03d}.png" for i in range(N_NORMAL)}
    assert set(_names(train)) | {_names(test)[0]} == normals and _names(test)[0] not in _names(train)
    # Placeholder masks: all False at each image's native size, also for the abnormal images.
    assert all(m.dtype == bool and m.shape == (H, W) and not m.any() for m in test.masks)
    assert not any(f.endswith("_mask.png") or "/masks/" in f for f in test.files)
    assert test.images.shape == (3, H, W, 3)


def test_with_masks(root):
    test = folder_reader.load_split(root, "screws", "test", 16, mask_dir="masks")
    assert test.has_masks and test.labels.tolist() == [0, 1, 1]
    assert not test.masks[0].any()
    np.testing.assert_array_equal(test.masks[1], mask_array(0))
    np.testing.assert_array_equal(test.masks[2], mask_array(1))
    base = root / "screws"
    assert {str(base / "masks" / "bad_000.png"), str(base / "masks" / "bad_001_mask.png")} <= set(test.files)
    train = folder_reader.load_split(root, "screws", "train", 16, mask_dir="masks")
    assert train.has_masks and len(train) == 4


def test_held_out_images_are_fixed_by_seed(root):
    def held(**o):
        return [p for p in folder_reader.load_split(root, "screws", "test", 8, **o).paths if "/normal/" in p]

    assert held() == held() == held(split_seed=0)
    assert len({tuple(held(split_seed=s)) for s in range(8)}) > 1  # another seed, another choice
    assert (
        len(held(test_fraction=0.4)) == 2
        and len(folder_reader.load_split(root, "screws", "train", 8, test_fraction=0.4)) == 3
    )
    assert (
        held(test_fraction=0.0) == []
        and len(folder_reader.load_split(root, "screws", "train", 8, test_fraction=0)) == 5
    )
    assert folder_reader.held_out(["a.png", "b.png"], 0.01, 0) in ({"a.png"}, {"b.png"})  # at least one


def test_names_configurable_ok_ko(tmp_path):
    base = write_folder(tmp_path / "ok_ko", normal="ok", abnormal="ko", masks="gt/ko", normal_test="ok_test")
    opts = dict(normal_dir="ok", abnormal_dir="ko", mask_dir="gt/ko", normal_test_dir="ok_test")
    # The root holds ok/ itself: it is the one category, named after the folder.
    assert folder_reader.list_categories(base, **opts) == ["ok_ko"]
    train = folder_reader.load_split(base, "ok_ko", "train", 8, **opts)
    test = folder_reader.load_split(base, "ok_ko", "test", 8, **opts)
    assert len(train) == N_NORMAL and all("/ok/" in p for p in train.paths)  # nothing held out
    assert _names(test) == ["ok_test/ok_000.png", "ok_test/ok_001.png", "ko/bad_000.png", "ko/bad_001.jpg"]
    assert test.defect_types == ["good", "good", "ko", "ko"] and test.has_masks
    np.testing.assert_array_equal(test.masks[3], mask_array(1))
    with pytest.raises(DatasetError, match=r"'other' not found: the root .* is the one category, named 'ok_ko'"):
        folder_reader.scan_split(base, "other", "test", **opts)


def test_list_categories(root):
    write_folder(root / "nuts", seed=1)
    (root / "empty").mkdir()
    (root / "readme.txt").write_text("x")
    assert folder_reader.list_categories(root) == ["nuts", "screws"]
    assert folder_reader.list_categories(root, normal_dir="ok") == []
    assert folder_reader.list_categories(root / "nuts") == ["nuts"]


def test_registered_reader(root):
    r = get_reader("folder")
    assert r is LAYOUTS["folder"] and r.scan is folder_reader.scan_split and r.splits == ("train", "test")
    assert set(r.options) == set(folder_reader.DEFAULT_OPTIONS) and "mask_dir" in r.options
    assert r.list_categories(root, mask_dir="masks") == ["screws"]
    recs = r.scan(root, "screws", "test", mask_dir="masks")
    assert [(x.defect_type, x.mask_path and x.mask_path.name) for x in recs][1:] == [
        ("abnormal", "bad_000.png"),
        ("abnormal", "bad_001_mask.png"),
    ]
    s = r.load_split(root, "screws", "test", 8, resize="cv2_linear", mask_dir="masks")
    assert s.images.shape == (3, 8, 8, 3) and s.has_masks


def test_extensions_option(root):
    with pytest.raises(DatasetError, match="Unexpected file " + _match(root / "screws" / "abnormal" / "bad_001.jpg")):
        folder_reader.scan_split(root, "screws", "test", extensions=["png"])
    assert len(folder_reader.scan_split(root, "screws", "test", extensions=["PNG", ".jpg"])) == 3


# ----------------------------------------------------------------------------
# Bad input: one DatasetError naming the file, folder or option.


def test_missing_mask(root):
    (root / "screws" / "masks" / "bad_001_mask.png").unlink()
    with pytest.raises(
        DatasetError,
        match="No mask for the abnormal image "
        + _match(root / "screws" / "abnormal" / "bad_001.jpg")
        + ": expected "
        + _match(root / "screws" / "masks" / "bad_001_mask.png"),
    ):
        folder_reader.scan_split(root, "screws", "test", mask_dir="masks")


def test_orphan_mask(root):
    orphan = root / "screws" / "masks" / "good_000.png"
    shutil.copy(root / "screws" / "masks" / "bad_000.png", orphan)
    with pytest.raises(DatasetError, match="Mask " + _match(orphan) + " belongs to no image of "):
        folder_reader.scan_split(root, "screws", "train", mask_dir="masks")


def test_two_masks_for_one_image(root):
    shutil.copy(root / "screws" / "masks" / "bad_000.png", root / "screws" / "masks" / "bad_000_mask.png")
    with pytest.raises(DatasetError, match="Two masks for the image stem 'bad_000'"):
        folder_reader.scan_split(root, "screws", "test", mask_dir="masks")


def test_missing_mask_dir(root):
    with pytest.raises(
        DatasetError, match="Missing mask folder " + _match(root / "screws" / "gt") + r".*mask_dir='gt'"
    ):
        folder_reader.scan_split(root, "screws", "test", mask_dir="gt")


def test_missing_abnormal_dir(root):
    with pytest.raises(
        DatasetError, match="Missing folder " + _match(root / "screws" / "ko") + r" \(data.folder.abnormal_dir='ko'\)"
    ):
        folder_reader.scan_split(root, "screws", "train", abnormal_dir="ko")


def test_stray_file_and_sub_folder(root):
    stray = root / "screws" / "normal" / "notes.txt"
    stray.write_text("x")
    with pytest.raises(DatasetError, match="Unexpected file " + _match(stray)):
        folder_reader.scan_split(root, "screws", "train")
    stray.unlink()
    (root / "screws" / "abnormal" / "scratch").mkdir()
    with pytest.raises(DatasetError, match="Unexpected folder " + _match(root / "screws" / "abnormal" / "scratch")):
        folder_reader.scan_split(root, "screws", "test")


def test_empty_normal_dir(tmp_path):
    base = write_folder(tmp_path / "c")
    for p in (base / "normal").iterdir():
        p.unlink()
    with pytest.raises(
        DatasetError, match="The folder " + _match(base / "normal") + r" \(data.folder.normal_dir\) holds no image"
    ):
        folder_reader.scan_split(base, "c", "train")


def test_test_fraction_leaving_no_train_image(tmp_path):
    base = tmp_path / "c"
    write_folder(base)
    for p in sorted((base / "normal").iterdir())[1:]:
        p.unlink()
    with pytest.raises(DatasetError, match=r"test_fraction=0.2 would hold out 1 of the 1 normal image"):
        folder_reader.scan_split(base, "c", "train")


def test_unknown_category(root):
    with pytest.raises(DatasetError, match=r"'bolts' not found: .*Categories under .*: screws"):
        folder_reader.load_split(root, "bolts", "train", 8)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(mask_folder="masks"), r"Unknown option\(s\) data.folder.mask_folder"),
        (dict(normal_dir=""), r"data.folder.normal_dir='' is invalid"),
        (dict(abnormal_dir="/abs/bad"), r"data.folder.abnormal_dir='/abs/bad' is invalid: .*relative"),
        (dict(mask_dir="../masks"), r"data.folder.mask_dir='../masks' is invalid"),
        (dict(mask_dir="normal"), r"data.folder.mask_dir='normal' is invalid: data.folder.normal_dir names the same"),
        (dict(abnormal_dir="good", normal_dir="ok"), r"data.folder.abnormal_dir='good' is invalid"),
        (dict(test_fraction=1.0), r"data.folder.test_fraction=1.0 is invalid"),
        (dict(test_fraction="0.2"), r"data.folder.test_fraction='0.2' is invalid"),
        (dict(split_seed=0.5), r"data.folder.split_seed=0.5 is invalid"),
        (dict(extensions=".png"), r"data.folder.extensions='.png' is invalid"),
        (dict(normal_dir=3), r"data.folder.normal_dir=3 is invalid"),
    ],
)
def test_bad_options(root, options, message):
    with pytest.raises(DatasetError, match=message):
        folder_reader.load_split(root, "screws", "test", 8, **options)
    with pytest.raises(DatasetError, match=message):
        folder_reader.list_categories(root, **options)


def test_mask_size_differs(root):
    mask = root / "screws" / "masks" / "bad_000.png"
    Image.fromarray(np.zeros((H, W - 1), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match="Mask " + _match(mask) + f" is {W - 1}x{H}"):
        folder_reader.load_split(root, "screws", "test", 8, mask_dir="masks")
