"""Dataset formats: tiny fixtures in each real file syntax (split files, pickles, list files, CSV,
JPEG frame folders, mp4/avi videos), indexed, loaded and trained on; and the bad-input errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.io import write_jpeg

from tests.helpers import REPO, TINY_FLAGS, run_vidlit
from datamodules.ucf_hmdb import CLASSES as UCF_HMDB_CLASSES
from vidlit.data import DATAMODULES, DataError, VideoRecord
from vidlit.data.frames import decode_frame_folder, infer_layout, probe_frame_folder
from vidlit.data.video_io import VideoDecodeError, write_video

SIZE = 32
FAST = dict(size=SIZE, num_frames=4, frame_stride=2, batch_size=4, num_workers=0, backbone="tiny3d")

# UCF101 classes of the fixture (classInd order: JumpingJack before JumpRope, unlike sorted())
UCF_CLASSES = ["Archery", "BoxingSpeedBag", "JumpingJack", "JumpRope", "Punch"]
HMDB_CLASSES = ["brush_hair", "punch", "shoot_bow"]
HMDB_FLAGS = {1: [1, 1, 1, 2, 2, 0], 2: [2, 2, 1, 1, 1, 0]}  # per video, split files 1 and 2


# ----------------------------------------------------------------------------- fixture writers
def _clip(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _video(path: str, n: int = 8, seed: int = 0, fps: int = 8) -> str:
    write_video(path, _clip(n, seed), fps=fps, codec="mpeg4" if path.endswith(".avi") else "libx264")
    return path


def _frames(folder: str, n: int, template: str = "img_{:05d}.jpg", first: int = 1, values=None) -> str:
    """``n`` JPEG frames; frame k is flat grey ``values[k]`` (default: noise)."""
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
        if values is None:
            img = torch.from_numpy(_clip(1, k)[0]).permute(2, 0, 1).contiguous()
        else:
            img = torch.full((3, SIZE, SIZE), int(values[k]), dtype=torch.uint8)
        write_jpeg(img, os.path.join(folder, template.format(k + first)), quality=95)
    return folder


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def _dm(name: str, **kw):
    return DATAMODULES.get(name)(**{**FAST, **kw})


def _batch(dm) -> dict:
    """Index, set up and load one training batch as the trainer would."""
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].dtype == torch.uint8
    assert batch["video"].shape[1:] == (3, 4, SIZE, SIZE)
    assert set(batch["domain"].tolist()) == set(range(len(dm.source_domains)))
    return batch


# ----------------------------------------------------------------------------- dataset trees
@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> dict:
    """UCF101: UCF-101/<Class>/v_<Class>_gXX_cYY.avi (g01 test, g08-g10 train) and ucfTrainTestlist/."""
    top = tmp_path_factory.mktemp("ucf")
    root, splits = str(top / "UCF-101"), str(top / "ucfTrainTestlist")
    train, test = [], []
    for ci, cls in enumerate(UCF_CLASSES, 1):
        for g in (1, 8, 9, 10):
            for c in (1, 2):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                _video(os.path.join(root, rel), seed=ci * 100 + g * 10 + c)
                (test.append(rel) if g == 1 else train.append(f"{rel} {ci}"))
    _write(os.path.join(splits, "classInd.txt"), "".join(f"{i} {c}\n" for i, c in enumerate(UCF_CLASSES, 1)))
    _write(os.path.join(splits, "trainlist01.txt"), "\n".join(train) + "\n")
    _write(os.path.join(splits, "testlist01.txt"), "\n".join(test) + "\n")
    return {"root": root, "splits": splits}


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory) -> dict:
    """HMDB51: hmdb51/<class>/<video>.avi (shoot_bow as img_00001.jpg frame folders) and
    testTrainMulti_7030_splits/<class>_test_split{1,2}.txt."""
    top = tmp_path_factory.mktemp("hmdb")
    root, splits = str(top / "hmdb51"), str(top / "testTrainMulti_7030_splits")
    for ci, cls in enumerate(HMDB_CLASSES):
        names = [f"{cls}_clip{k}_f_cm_np1_ri_med_{k}.avi" for k in range(6)]
        for k, name in enumerate(names):
            if cls == "shoot_bow":
                _frames(os.path.join(root, cls, name[:-4]), 10)
            else:
                _video(os.path.join(root, cls, name), seed=1000 + ci * 10 + k)
        for split, flags in HMDB_FLAGS.items():
            _write(os.path.join(splits, f"{cls}_test_split{split}.txt"), "".join(f"{n} {f} \n" for n, f in zip(names, flags)))
    for cls in set(UCF_HMDB_CLASSES) - set(HMDB_CLASSES):  # the other shared classes: split files, no videos used
        for split in HMDB_FLAGS:
            _write(os.path.join(splits, f"{cls}_test_split{split}.txt"), f"{cls}_unused_clip.avi 0 \n")
    return {"root": root, "splits": splits}


@pytest.fixture(scope="module")
def epic(tmp_path_factory) -> dict:
    """EPIC-Kitchens DA: D{1,2,3}_{train,test}.pkl and rgb/<participant>/<video_id>/frame_0000000001.jpg
    (D2's test video in the download-script layout rgb/test/D2/<video_id>/)."""
    top = tmp_path_factory.mktemp("epic")
    rgb = top / "rgb"
    for d, pid in (("D1", "P08"), ("D2", "P01"), ("D3", "P22")):
        for part, videos in (("train", [f"{pid}_01", f"{pid}_02"]), ("test", [f"{pid}_11"])):
            rows = []
            for vid in videos:
                layout = rgb / "test" / d / vid if (d, part) == ("D2", "test") else rgb / pid / vid
                _frames(str(layout), 24, "frame_{:010d}.jpg")
                for s, (verb, name) in enumerate([(0, "take"), (3, "close"), (0, "pick-up"), (3, "close")]):
                    rows.append(dict(participant_id=pid, video_id=vid, narration=f"{name} thing", start_timestamp="00:00:01.00",
                                     stop_timestamp="00:00:02.00", start_frame=1 + 5 * s, stop_frame=8 + 5 * s, verb=name, verb_class=verb))
            pd.DataFrame(rows).to_pickle(str(top / f"{d}_{part}.pkl"))
    return {"root": str(top), "rgb": str(rgb)}


# ----------------------------------------------------------------------------- frame folders
def test_frame_folder_reads_the_requested_frames_one_based(tmp_path):
    folder = _frames(str(tmp_path / "v"), 6, "frame_{:010d}.jpg", values=[20, 60, 100, 140, 180, 220])
    rec = VideoRecord(path=folder, label="a", domain="d", kind="frames")
    assert infer_layout(folder).template == "frame_{:010d}.jpg" and infer_layout(folder).first == 1
    info = probe_frame_folder(rec)
    assert (info.num_frames, info.height, info.width) == (6, SIZE, SIZE)
    clip = decode_frame_folder(rec, np.array([0, 2, 2, 5]))
    assert clip.shape == (4, SIZE, SIZE, 3) and clip.dtype == np.uint8
    assert np.abs(clip.reshape(4, -1).mean(1) - [20, 100, 100, 220]).max() < 4


def test_frame_folder_reads_only_needed_files_and_prefers_rgb_names(tmp_path):
    folder = _frames(str(tmp_path / "v"), 5, values=[10, 50, 90, 130, 170])
    _frames(folder, 5, "x_{:05d}.jpg", values=[255] * 5)  # mmaction2 flow frames in the same folder
    with open(os.path.join(folder, "img_00002.jpg"), "wb") as fh:
        fh.write(b"not a jpeg")
    rec = VideoRecord(path=folder, label="a", domain="d", kind="frames")
    clip = decode_frame_folder(rec, np.array([0, 2]))  # files 1 and 3; file 2 is never read
    assert np.abs(clip.reshape(2, -1).mean(1) - [10, 90]).max() < 4
    with pytest.raises(VideoDecodeError, match="img_00002.jpg"):
        decode_frame_folder(rec, np.array([1]))


def test_missing_frame_names_folder_and_frame(tmp_path):
    folder = _frames(str(tmp_path / "v"), 6)
    os.remove(os.path.join(folder, "img_00004.jpg"))
    with pytest.raises(VideoDecodeError, match=r"v: frame img_00004.jpg is missing"):
        probe_frame_folder(VideoRecord(path=folder, label="a", domain="d", kind="frames"))
    # a declared frame count beyond the last file is missing frames too
    whole = _frames(str(tmp_path / "w"), 3)
    with pytest.raises(VideoDecodeError, match="img_00004.jpg is missing"):
        probe_frame_folder(VideoRecord(path=whole, label="a", domain="d", kind="frames", extra={"total_frames": 5}))


# ----------------------------------------------------------------------------- manifest
@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> str:
    top = tmp_path_factory.mktemp("manifest")
    for d in ("indoor", "outdoor"):
        _video(str(top / d / "long.mp4"), n=48, seed=len(d), fps=8)  # 6 s
        for k in range(3):
            _video(str(top / d / f"jump{k}.mp4"), seed=k + len(d))
    _frames(str(top / "outdoor" / "frames_run"), 16)
    return str(top)


def test_manifest_segments_in_frames_and_seconds(manifest_dir):
    rows = ["path,label,domain,start_frame,end_frame,start_sec,end_sec"]
    for d in ("indoor", "outdoor"):
        rows += [f"{d}/long.mp4,run,{d},0,16,,", f"{d}/long.mp4,run,{d},,,2.0,4.0", f"{d}/long.mp4,wave,{d},,,4.5,"]
        rows += [f"{d}/jump{k}.mp4,jump,{d},,,," for k in range(3)]
        rows += [f"{d}/long.mp4,wave,{d},40,48,,", f"{d}/long.mp4,wave,{d},32,40,,"]
    rows.append("outdoor/frames_run,run,outdoor,2,12,,")
    csv_path = _write(os.path.join(manifest_dir, "all.csv"), "\n".join(rows) + "\n")
    dm = _dm("manifest", manifest=csv_path, target_domains=["outdoor"], holdout_fraction=0.0)
    dm.prepare_index()
    assert dm.class_names == ["jump", "run", "wave"]
    indoor = {(r.label, r.start_frame, r.end_frame) for r in dm.train_records}
    assert ("run", 16, 32) in indoor and ("wave", 36, None) in indoor and ("run", 0, 16) in indoor  # 2.0 s x 8 fps = 16
    frames = [r for r in dm.test_records if r.kind == "frames"]
    assert len(frames) == 1 and (frames[0].start_frame, frames[0].end_frame) == (2, 12)
    _batch(dm)
    dm.setup("test")
    assert len(next(iter(dm.test_dataloader()))["label"]) == min(4, len(dm.test_records))


def test_manifest_problems_reported_together(manifest_dir):
    csv_path = _write(os.path.join(manifest_dir, "bad.csv"), "\n".join([
        "path,label,domain,start_sec,end_sec",
        "indoor/long.mp4,run,indoor,1,3",
        "indoor/nope.mp4,run,indoor,,",
        "indoor/long.mp4,run,indoor,5,99",
        "indoor/long.mp4,,indoor,,",
        "outdoor/frames_run,run,outdoor,0,1",
    ]) + "\n")
    with pytest.raises(DataError) as err:
        _dm("manifest", manifest=csv_path).prepare_index()
    lines = str(err.value).splitlines()
    assert lines[0].startswith("4 problem(s) in --data.manifest")
    text = str(err.value)
    assert "nope.mp4: listed in " in text and "bad.csv line 3 but does not exist" in text
    assert "bad.csv line 4: segment start_sec=5 end_sec=99 lies outside" in text
    assert "bad.csv line 5: empty label" in text
    assert "bad.csv line 6:" in text and "--data.fps" in text


def test_manifest_class_in_one_domain_only(manifest_dir):
    rows = ["path,label,domain"] + [f"indoor/jump{k}.mp4,jump,indoor" for k in range(3)]
    rows += [f"outdoor/jump{k}.mp4,jump,outdoor" for k in range(3)] + ["indoor/long.mp4,run,indoor"]
    csv_path = _write(os.path.join(manifest_dir, "onesided.csv"), "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"domain 'outdoor' lacks class\(es\) run.*--data.classes"):
        _dm("manifest", manifest=csv_path).prepare_index()
    dm = _dm("manifest", manifest=csv_path, classes=["jump"])
    dm.prepare_index()
    assert dm.class_names == ["jump"] and all(r.label == "jump" for r in dm.train_records + dm.val_records)


# ----------------------------------------------------------------------------- mmaction2 lists
def test_videolist_with_label_map_and_numeric_labels(tmp_path):
    lists = {}
    for d in ("cam1", "cam2"):
        lines = []
        for label in (2, 10):
            for k in range(3):
                rel = f"videos/{d}/l{label}_{k}.mp4"
                _video(str(tmp_path / rel), seed=label * 10 + k)
                lines.append(f"{rel} {label}")
        lists[d] = _write(str(tmp_path / f"{d}_list.txt"), "\n".join(lines) + "\n")
    dm = _dm("videolist", lists=lists)
    dm.prepare_index()
    assert dm.class_names == ["2", "10"]  # numeric order, not string order
    assert (dm.source_domains, dm.target_domains) == (["cam1"], ["cam2"])  # the last list is the target
    _batch(dm)
    names = _write(str(tmp_path / "labels.txt"), "".join(f"class{i}\n" for i in range(11)))
    dm = _dm("videolist", lists=lists, label_map=names)
    dm.prepare_index()
    assert dm.class_names == ["class2", "class10"]
    # unknown labels (beyond the label map) and a missing video: one error, one line per file
    bad = _write(str(tmp_path / "bad_list.txt"), "videos/cam1/l2_0.mp4 11\nvideos/cam1/l2_1.mp4 x\nvideos/cam1/gone.mp4 2\n")
    with pytest.raises(DataError) as err:
        _dm("videolist", lists={"cam1": lists["cam1"], "cam2": bad}, label_map=names).prepare_index()
    text = str(err.value)
    assert "bad_list.txt: unknown label(s) '11' (line 1), 'x' (line 2)" in text
    assert "gone.mp4: listed in " in text and "line 3 but does not exist" in text


def test_rawframes_lists_index_load_and_missing_frames(tmp_path):
    lists = {}
    for d in ("day", "night"):
        lines = []
        for label in (0, 1):
            for k in range(3):
                rel = f"rawframes/{d}/v{label}_{k}"
                _frames(str(tmp_path / rel), 8)
                _frames(str(tmp_path / rel), 8, "x_{:05d}.jpg")  # flow frames alongside, as mmaction2 extracts them
                lines.append(f"{rel} 8 {label}")
        lists[d] = _write(str(tmp_path / f"{d}.txt"), "\n".join(lines) + "\n")
    dm = _dm("rawframes", lists=lists)
    dm.prepare_index()
    assert all(r.kind == "frames" and r.num_frames == 8 for r in dm.train_records + dm.test_records)
    _batch(dm)
    os.remove(str(tmp_path / "rawframes/night/v1_2/img_00005.jpg"))
    with pytest.raises(DataError) as err:
        _dm("rawframes", lists={**lists, "night": _write(str(tmp_path / "n2.txt"), open(lists["night"]).read() + "rawframes/night/v0_0 9 0\n")}).prepare_index()
    text = str(err.value)
    assert "v1_2: frame img_00005.jpg is missing" in text and "v0_0: frame img_00009.jpg is missing" in text


# ----------------------------------------------------------------------------- UCF101 / HMDB51
def test_ucf101_official_split_groups_and_class_order(ucf):
    dm = _dm("ucf101", root=ucf["root"], splits_dir=ucf["splits"], holdout_fraction=0.34)
    dm.prepare_index()
    assert (dm.source_domains, dm.target_domains) == (["train"], ["test"])
    assert dm.class_names == UCF_CLASSES  # classInd.txt order
    assert len(dm.test_records) == len(UCF_CLASSES) * 2 and {r.group for r in dm.test_records} == {"g01"}
    train_groups, val_groups = {r.group for r in dm.train_records}, {r.group for r in dm.val_records}
    assert val_groups and not train_groups & val_groups and train_groups | val_groups == {"g08", "g09", "g10"}
    _batch(dm)
    # the splits folder is found next to the videos without --data.splits_dir
    dm = _dm("ucf101", root=ucf["root"])
    dm.prepare_index()
    assert len(dm.test_records) == len(UCF_CLASSES) * 2


def test_ucf101_bad_split_lines_reported_together(ucf, tmp_path):
    splits = str(tmp_path / "splits")
    classind = open(os.path.join(ucf["splits"], "classInd.txt")).read()
    _write(os.path.join(splits, "classInd.txt"), classind)
    _write(os.path.join(splits, "trainlist01.txt"), "Archery/v_Archery_g08_c01.avi 1\nArchery/v_Archery_g08_c02.avi 77\n"
           "Archery/v_Archery_g09_c01.avi 5\nPunch/v_Punch_g30_c01.avi 5\n")
    _write(os.path.join(splits, "testlist01.txt"), "Archery/v_Archery_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n")
    with pytest.raises(DataError) as err:
        _dm("ucf101", root=ucf["root"], splits_dir=splits).prepare_index()
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 4
    text = str(err.value)
    assert "trainlist01.txt: unknown label(s) '77' (line 2)" in text
    assert "testlist01.txt: unknown label(s) 'YoYo' (line 2)" in text
    assert "trainlist01.txt line 3: Archery/v_Archery_g09_c01.avi is in folder 'Archery' but label 5 is 'Punch'" in text
    assert "v_Punch_g30_c01.avi: listed in" in text
    # a split whose files are missing
    with pytest.raises(DataError, match=r"trainlist02.txt: UCF101 split file \(trainlist02.txt\) does not exist"):
        _dm("ucf101", root=ucf["root"], splits_dir=ucf["splits"], split=2).prepare_index()


def test_hmdb51_splits_frames_and_missing_split_file(hmdb, tmp_path):
    dm = _dm("hmdb51", root=hmdb["root"], splits_dir=hmdb["splits"])
    dm.prepare_index()
    assert (dm.source_domains, dm.target_domains) == (["train"], ["test"])
    assert len(dm.test_records) == 2 * len(HMDB_CLASSES)
    assert len(dm.train_records) + len(dm.val_records) == 3 * len(HMDB_CLASSES)
    assert {r.kind for r in dm.test_records if r.label == "shoot_bow"} == {"frames"}
    _batch(dm)
    dm2 = _dm("hmdb51", root=hmdb["root"], splits_dir=hmdb["splits"], split=2)
    dm2.prepare_index()
    assert {r.path for r in dm2.test_records}.isdisjoint({r.path for r in dm.test_records})
    # unknown split label and a class folder without split file
    splits = str(tmp_path / "splits")
    for cls in HMDB_CLASSES[:2]:
        text = open(os.path.join(hmdb["splits"], f"{cls}_test_split1.txt")).read()
        _write(os.path.join(splits, f"{cls}_test_split1.txt"), text.replace(" 2 \n", " 3 \n", 1))
    with pytest.raises(DataError) as err:
        _dm("hmdb51", root=hmdb["root"], splits_dir=splits).prepare_index()
    text = str(err.value)
    assert "brush_hair_test_split1.txt: unknown label(s) '3' (line 4)" in text
    assert "shoot_bow_test_split1.txt: split file of class 'shoot_bow' is missing" in text


# ----------------------------------------------------------------------------- UCF-HMDB and EPIC, trained via the CLI
def _train(config: str, tmp_path, *overrides: str) -> dict:
    run_dir = str(tmp_path / "run")
    proc = run_vidlit(
        "fit", "--config", os.path.join(REPO, "configs", config), *TINY_FLAGS, "--trainer.max_epochs", "1",
        "--model.backbone", "tiny3d", "--model.pretrained", "null", "--data.num_workers", "0",
        "--trainer.default_root_dir", run_dir, *overrides, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run_dir, "results.json")) as fh:
        return json.load(fh)


def test_ucf_hmdb_config_trains(ucf, hmdb, tmp_path):
    res = _train(
        "ucf_hmdb_u2h.yaml", tmp_path, "--data.ucf_root", ucf["root"], "--data.ucf_splits_dir", ucf["splits"],
        "--data.hmdb_root", hmdb["root"], "--data.hmdb_splits_dir", hmdb["splits"],
    )
    assert res["dataset"] == "ucf_hmdb"
    assert (res["source_domains"], res["target_domains"]) == (["ucf"], ["hmdb"])
    assert res["class_names"] == ["punch", "shoot_bow"]  # BoxingSpeedBag + Punch -> punch; Archery -> shoot_bow
    assert res["test_acc"] is not None


def test_ucf_hmdb_h2u_records(ucf, hmdb):
    dm = _dm("ucf_hmdb", ucf_root=ucf["root"], hmdb_root=hmdb["root"], source_domains=["hmdb"], target_domains=["ucf"])
    dm.prepare_index()
    # target UCF: the test split (g01) of the mapped classes only; source HMDB: its train split
    assert {r.group for r in dm.test_records} == {"g01"} and len(dm.test_records) == 3 * 2
    assert {r.label for r in dm.test_records} == {"punch", "shoot_bow"}
    assert len(dm.train_records) + len(dm.val_records) == 2 * 3
    assert all(r.domain == "hmdb" for r in dm.train_records)
    # --data.classes restricts the classes (and their order); names outside the 12 are an error
    dm = _dm("ucf_hmdb", ucf_root=ucf["root"], hmdb_root=hmdb["root"], classes=["shoot_bow"])
    dm.prepare_index()
    assert dm.class_names == ["shoot_bow"] and {r.label for r in dm.test_records} == {"shoot_bow"}
    with pytest.raises(DataError, match="--data.classes: Archery not among the UCF-HMDB classes"):
        _dm("ucf_hmdb", ucf_root=ucf["root"], hmdb_root=hmdb["root"], classes=["Archery"]).prepare_index()


def test_epic_kitchens_config_trains(epic, tmp_path):
    res = _train("epic_d1d2_to_d3.yaml", tmp_path, "--data.annotations_dir", epic["root"], "--data.frames_dir", epic["rgb"],
                 "--data.target_domains", "[D2]", "--data.source_domains", "[D1, D3]")
    assert (res["source_domains"], res["target_domains"]) == (["D1", "D3"], ["D2"])
    assert res["class_names"] == ["take", "close"]
    assert res["test_acc"] is not None


def test_epic_kitchens_segments_groups_and_problems(epic, tmp_path):
    dm = _dm("epic_kitchens", root=epic["root"], holdout_fraction=0.5)
    dm.prepare_index()
    assert dm.target_domains == ["D3"] and dm.source_domains == ["D1", "D2"]
    assert {(r.start_frame, r.end_frame) for r in dm.test_records} == {(5 * s, 8 + 5 * s) for s in range(4)}
    assert {r.group for r in dm.test_records} == {"P22_11"}
    for d in ("D1", "D2"):  # whole videos held out
        train = {r.group for r in dm.train_records if r.domain == d}
        val = {r.group for r in dm.val_records if r.domain == d}
        assert train and val and not train & val
    _batch(dm)
    # unknown verb class, missing frame folder, missing annotation file: one error
    ann = tmp_path / "ann"
    ann.mkdir()
    for name in ("D1_train", "D2_train", "D3_test"):
        df = pd.read_pickle(os.path.join(epic["root"], f"{name}.pkl"))
        if name == "D1_train":
            df.loc[1, "verb_class"] = 12
        if name == "D2_train":
            df.loc[df.video_id == "P01_02", "video_id"] = "P01_99"
        if name != "D3_test":
            df.to_pickle(str(ann / f"{name}.pkl"))
    with pytest.raises(DataError) as err:
        _dm("epic_kitchens", annotations_dir=str(ann), frames_dir=epic["rgb"]).prepare_index()
    text = str(err.value)
    assert text.startswith("3 problem(s)")
    assert "D1_train.pkl: unknown label(s) '12' (row 2)" in text
    assert "P01_99: frame folder missing (4 segment(s) of" in text
    assert "D3_test.pkl: annotation file is missing" in text


def test_cli_reports_index_problems_as_one_error(ucf, tmp_path):
    proc = run_vidlit("fit", "--dataset", "ucf101", "--data.root", ucf["root"], "--data.splits_dir", str(tmp_path), *TINY_FLAGS)
    assert proc.returncode == 2
    assert "vidlit: error: " in proc.stderr and "classInd.txt: UCF101 class list (classInd.txt) does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
