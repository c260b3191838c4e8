"""Layer 4, a trained network outside the training loop: loaded from a checkpoint, Grad-CAM, rendering of heat maps."""
