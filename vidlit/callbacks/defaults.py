"""The callbacks the CLI adds to every Trainer."""
from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback

from vidlit.callbacks.fault import FaultInjection
from vidlit.callbacks.media import WandbMediaCallback
from vidlit.callbacks.seeding import EpochSeedCallback
from vidlit.utils.fault import FAULT_ENV


def default_callbacks() -> list[Callback]:
    """The callbacks the CLI adds to every trainer."""
    from vidlit.callbacks.checkpoint import RunStampCallback
    from vidlit.callbacks.confusion import PerClassResults
    from vidlit.callbacks.predictions import PredictionWriter
    from vidlit.callbacks.tables import DomainResultsTable, VidlitModelSummary

    callbacks: list[Callback] = [EpochSeedCallback(), WandbMediaCallback(), RunStampCallback(), PredictionWriter(),
                                 VidlitModelSummary(), DomainResultsTable(), PerClassResults()]
    if os.environ.get(FAULT_ENV):
        callbacks.append(FaultInjection())
    return callbacks
