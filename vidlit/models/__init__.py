"""Layer 2, networks and losses: the backbone registry, pretrained weights, the Strategy base class, DG losses, weight-averaging math."""
