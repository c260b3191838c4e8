"""vidlit: transfer learning and domain generalization for video classification on Lightning."""
__version__ = "0.1.0"
