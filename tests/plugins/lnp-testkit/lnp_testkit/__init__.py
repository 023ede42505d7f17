"""Test plugins: `tk_alpha` (service alpha) asks, `tk_beta` (service beta) answers."""
