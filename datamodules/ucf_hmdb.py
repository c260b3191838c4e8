"""``ucf_hmdb``: the UCF-HMDB_full benchmark (12 shared classes), read from the original UCF101 and
HMDB51 folders and split files; domains ``ucf`` and ``hmdb``."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from datamodules._common import FormatDataModule, Problems, check_split_number, resolve_entries
from datamodules.hmdb51 import hmdb51_entries, hmdb51_splits_dir
from datamodules.ucf101 import ucf101_entries, ucf101_splits_dir
from vidlit.data.datamodule import register_datamodule
from vidlit.data.records import DataError, VideoRecord, check_domains

CLASSES = (
    "climb", "fencing", "golf", "kick_ball", "pullup", "punch", "pushup", "ride_bike", "ride_horse",
    "shoot_ball", "shoot_bow", "walk",
)
UCF_TO_SHARED = {
    "RockClimbingIndoor": "climb", "RopeClimbing": "climb", "Fencing": "fencing", "GolfSwing": "golf",
    "SoccerPenalty": "kick_ball", "PullUps": "pullup", "BoxingPunchingBag": "punch", "BoxingSpeedBag": "punch",
    "Punch": "punch", "PushUps": "pushup", "Biking": "ride_bike", "HorseRiding": "ride_horse",
    "Basketball": "shoot_ball", "Archery": "shoot_bow", "WalkingWithDog": "walk",
}
DOMAINS = ("hmdb", "ucf")


@register_datamodule("ucf_hmdb")
class UCFHMDBDataModule(FormatDataModule):
    """UCF-HMDB_full: 12 classes shared by UCF101 and HMDB51 (TA3N's list), domains ``ucf``/``hmdb``.

    A source domain contributes its dataset's official *train* split (its held-out part is the
    validation set); the target domain contributes its *test* split, as in the papers' UCF->HMDB
    (default, ``--data.target_domains '[hmdb]'``) and HMDB->UCF (``'[ucf]'``) settings. The 15
    UCF101 classes are mapped onto the 12 HMDB51 class names (see ``UCF_TO_SHARED``); other classes
    are not used; ``--data.classes`` restricts the 12 further (only their split files are read).
    Videos or frame folders, as for ``ucf101`` and ``hmdb51``.

    Args:
        ucf_root: UCF101 folder of class folders (``UCF-101/``).
        hmdb_root: HMDB51 folder of class folders.
        ucf_splits_dir: UCF101 split files folder (default as for ``ucf101``).
        hmdb_splits_dir: HMDB51 split files folder (default as for ``hmdb51``).
        split: official split number of both datasets (1, as in the papers).
        frame_template: file names in frame folders (default: derived from the folder).
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule` (``root`` is not used).
    """

    default_target = ["hmdb"]

    def __init__(
        self,
        *args: Any,
        ucf_root: Optional[str] = None,
        hmdb_root: Optional[str] = None,
        ucf_splits_dir: Optional[str] = None,
        hmdb_splits_dir: Optional[str] = None,
        split: int = 1,
        frame_template: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ucf_root, self.hmdb_root = ucf_root, hmdb_root
        self.ucf_splits_dir, self.hmdb_splits_dir = ucf_splits_dir, hmdb_splits_dir
        self.split, self.frame_template = split, frame_template

    def describe(self) -> str:
        return f"UCF-HMDB (--data.ucf_root {self.ucf_root}, --data.hmdb_root {self.hmdb_root}, split {self.split})"

    def index_records(self) -> list[VideoRecord]:
        check_split_number(self.split)
        unknown = [c for c in self._classes or [] if c not in CLASSES]
        if unknown:
            raise DataError(f"--data.classes: {', '.join(unknown)} not among the UCF-HMDB classes {', '.join(CLASSES)}")
        wanted = list(self._classes or CLASSES)
        _, targets = check_domains(DOMAINS, self._source, self._target or self.default_target, self.describe())
        problems = Problems()
        for flag, folder in (("--data.ucf_root", self.ucf_root), ("--data.hmdb_root", self.hmdb_root)):
            if not folder or not os.path.isdir(folder):
                problems.add(f"{flag}: folder '{folder}' does not exist; pass the dataset folder holding the class folders")
        problems.check(self.describe())
        part = {d: "test" if d in targets else "train" for d in DOMAINS}

        _, ucf = ucf101_entries(ucf101_splits_dir(self.ucf_root, self.ucf_splits_dir), self.split, problems, "--data.ucf_splits_dir")
        ucf = [dataclasses.replace(e, label=UCF_TO_SHARED[e.label]) for e in ucf
               if UCF_TO_SHARED.get(e.label) in wanted and e.part == part["ucf"]]
        hmdb_dir = hmdb51_splits_dir(self.hmdb_root, self.hmdb_splits_dir, self.split)
        hmdb = [e for e in hmdb51_entries(self.hmdb_root, hmdb_dir, self.split, problems, wanted, "--data.hmdb_splits_dir") if e.part == part["hmdb"]]
        records = resolve_entries(ucf, self.ucf_root, "ucf", problems, self.frame_template)
        records += resolve_entries(hmdb, self.hmdb_root, "hmdb", problems, self.frame_template)
        problems.check(self.describe())
        self.class_order = list(CLASSES)
        return records
