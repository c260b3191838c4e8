"""Layer 6, the commands (fit/validate/test/predict, adapt, explain, export, sweep, report, bench, list): nothing imports them."""
