"""``epic_kitchens``: the EPIC-Kitchens domain-adaptation split of MM-SADA (D1 = P08, D2 = P01,
D3 = P22), 8 verb classes, action segments of RGB frame folders."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Optional

from datamodules._common import FormatDataModule, Problems
from vidlit.data.datamodule import register_datamodule
from vidlit.data.records import DataError, VideoRecord, check_domains

DOMAINS = ("D1", "D2", "D3")
PARTICIPANTS = {"D1": "P08", "D2": "P01", "D3": "P22"}
# EPIC-Kitchens-55 verb classes 0..7, the ids MM-SADA's verb_class column uses
VERBS = ("take", "put", "open", "close", "wash", "cut", "mix", "pour")
COLUMNS = ("participant_id", "video_id", "start_frame", "stop_frame", "verb_class")
EPIC_FPS = 60.0


@register_datamodule("epic_kitchens")
class EpicKitchensDataModule(FormatDataModule):
    """EPIC-Kitchens DA split (MM-SADA): domains D1/D2/D3 (kitchens P08/P01/P22), 8 verbs.

    A source domain contributes the segments of ``D<n>_train.pkl`` (whole videos held out for
    validation: group = ``video_id``); the target domain (default D3) those of ``D<n>_test.pkl``.
    Segment ``[start_frame, stop_frame]`` (1-based, inclusive, as in the pickles) reads
    ``frame_{:010d}.jpg`` files from ``<frames_dir>/<participant>/<video_id>/``, or as MM-SADA's
    download script lays them out, ``<frames_dir>/<train|test>/<D1|D2|D3>/<video_id>/``, or as
    EPIC-Kitchens-55 does, ``<frames_dir>/<train|test>/<participant>/<video_id>/``.

    Args:
        annotations_dir: folder of ``D{1,2,3}_{train,test}.pkl`` (default: ``--data.root``).
        frames_dir: RGB frames folder (default: ``<root>/rgb``).
        frame_template: frame file names.
        **kwargs: see :class:`vidlit.data.MultiDomainDataModule`.
    """

    def __init__(
        self,
        *args: Any,
        annotations_dir: Optional[str] = None,
        frames_dir: Optional[str] = None,
        frame_template: str = "frame_{:010d}.jpg",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.annotations_dir = annotations_dir or self.root
        self.frames_dir = frames_dir or (os.path.join(self.root, "rgb") if self.root else None)
        self.frame_template = frame_template

    def describe(self) -> str:
        return f"EPIC-Kitchens (annotations {self.annotations_dir}, frames {self.frames_dir})"

    def index_records(self) -> list[VideoRecord]:
        if not self.annotations_dir or not os.path.isdir(self.annotations_dir):
            raise DataError(f"--data.annotations_dir (or --data.root): folder '{self.annotations_dir}' does not exist; pass the folder of D1_train.pkl ... D3_test.pkl")
        if not self.frames_dir or not os.path.isdir(self.frames_dir):
            raise DataError(f"--data.frames_dir: folder '{self.frames_dir}' does not exist; pass the RGB frames folder (rgb/)")
        _, targets = check_domains(DOMAINS, self._source, self._target, self.describe())
        problems = Problems()
        records: list[VideoRecord] = []
        for domain in DOMAINS:
            part = "test" if domain in targets else "train"
            records += self._read(domain, part, problems)
        problems.check(self.describe())
        self.class_order = list(VERBS)
        return records

    def _read(self, domain: str, part: str, problems: Problems) -> list[VideoRecord]:
        """The segments of ``<domain>_<part>.pkl``; problems go to ``problems``, one line per file or folder."""
        import pandas as pd

        file = os.path.join(self.annotations_dir, f"{domain}_{part}.pkl")
        if not os.path.isfile(file):
            problems.add(f"{file}: annotation file is missing; download it from the MM-SADA_Domain_Adaptation_Splits repository")
            return []
        try:
            df = pd.read_pickle(file)
        except Exception as err:  # noqa: BLE001 - a broken pickle raises many types
            problems.add(f"{file}: cannot read as a pandas pickle ({type(err).__name__}: {err}); download it again")
            return []
        lacking = [c for c in COLUMNS if c not in getattr(df, "columns", [])]
        if lacking:
            problems.add(f"{file}: lacks column(s) {', '.join(lacking)}; expected a DataFrame with {', '.join(COLUMNS)}")
            return []
        folders: dict[str, Optional[str]] = {}
        missing: dict[str, int] = defaultdict(int)
        bad_bounds: dict[int, str] = {}
        records = []
        for pos, row in enumerate(df.itertuples(index=False), 1):
            verb = int(row.verb_class) if str(row.verb_class).lstrip("-").isdigit() else None
            if verb is None or not 0 <= verb < len(VERBS):
                problems.unknown_label(file, str(row.verb_class), pos, f"verb_class must be 0..{len(VERBS) - 1} ({', '.join(VERBS)})", "row")
                continue
            try:
                start, stop = int(row.start_frame), int(row.stop_frame)
            except (TypeError, ValueError):
                start, stop = 0, -1  # not whole numbers: reported as bad bounds below
            if start < 1 or stop < start:
                bad_bounds[pos] = f"{row.start_frame}..{row.stop_frame}"
                continue
            video_id = str(row.video_id)
            if video_id not in folders:
                folders[video_id] = self._folder(str(row.participant_id), video_id, domain, part)
            if folders[video_id] is None:
                missing[os.path.join(self.frames_dir, str(row.participant_id), video_id)] += 1
                continue
            records.append(VideoRecord(
                path=folders[video_id], label=VERBS[verb], domain=domain, start_frame=start - 1, end_frame=stop,
                group=video_id, kind="frames", extra={"frame_template": self.frame_template, "frame_start": 1, "fps": EPIC_FPS},
            ))
        for folder, n in missing.items():
            problems.add(
                f"{folder}: frame folder missing ({n} segment(s) of {file} use it); extract the video's frames there "
                f"or at {os.path.join(self.frames_dir, part, domain, os.path.basename(folder))}"
            )
        if bad_bounds:
            rows = ", ".join(f"row {p} ({b})" for p, b in list(bad_bounds.items())[:8])
            problems.add(f"{file}: {len(bad_bounds)} segment(s) whose bounds are not whole numbers with 1 <= start_frame <= stop_frame: {rows}; fix or drop them")
        return records

    def _folder(self, participant: str, video_id: str, domain: str, part: str) -> Optional[str]:
        """The frame folder of a video in either supported layout, or None."""
        for cand in (
            os.path.join(self.frames_dir, participant, video_id),
            os.path.join(self.frames_dir, part, domain, video_id),
            os.path.join(self.frames_dir, part, participant, video_id),
        ):
            if os.path.isdir(cand):
                return cand
        return None
