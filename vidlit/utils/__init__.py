"""Layer 0, utilities that know nothing of training: errors, registries, atomic file writes, warning filters, hardware precision."""
