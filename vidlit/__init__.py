"""vidlit: transfer learning and domain generalization for video classification on Lightning."""
import time as _time

__version__ = "0.1.0"
#: when the package was first imported: ``results.json``'s ``wall_time_s`` counts from here
START_TIME = _time.time()

from vidlit import quiet as _quiet  # noqa: E402 - after START_TIME

_quiet.install()  # narrow filters for the libraries' known-harmless messages (see vidlit/quiet.py)
