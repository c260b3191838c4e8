"""Layer 1, the run folder and what lives in it: file names, run-folder rules, checkpoint metadata, results files, metric names."""
