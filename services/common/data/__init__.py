"""Task definitions and datasets: import, prepared splits, leakage checks."""
