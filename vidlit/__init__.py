"""vidlit: transfer learning and domain generalization for video classification on Lightning.

The public names below are imported on first use (``import vidlit`` itself imports neither torch
nor Lightning, so ``python -m vidlit --help`` answers at once). The packages, bottom layer first:
``utils`` -> ``run`` -> ``models`` -> ``data`` -> ``inference`` -> ``callbacks`` -> ``commands``
(docs/ARCHITECTURE.md); the old flat module paths keep working (``vidlit/_compat.py``).
"""
import time as _time

__version__ = "0.2.0"
#: when the package was first imported: ``results.json``'s ``wall_time_s`` counts from here
START_TIME = _time.time()

from vidlit import _compat  # noqa: E402
from vidlit.utils import quiet as _quiet  # noqa: E402 - after START_TIME

_quiet.install()  # narrow filters for the libraries' known-harmless messages (see vidlit/utils/quiet.py)
_compat.install()  # vidlit 0.1's module paths (vidlit.cli, vidlit.strategy, ...) still import

#: public name -> the module that defines it
_PUBLIC = {
    "Strategy": "vidlit.models.strategy", "register_strategy": "vidlit.models.strategy", "STRATEGIES": "vidlit.models.strategy",
    "Backbone": "vidlit.models.backbones", "register_backbone": "vidlit.models.backbones", "BACKBONES": "vidlit.models.backbones",
    "MultiDomainDataModule": "vidlit.data.datamodule", "register_datamodule": "vidlit.data.datamodule",
    "DATAMODULES": "vidlit.data.datamodule", "VideoRecord": "vidlit.data.records",
    "VidlitError": "vidlit.utils.errors", "DataError": "vidlit.utils.errors",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidlit' has no attribute '{name}'")


def __dir__():
    return __all__
