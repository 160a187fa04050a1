"""Runtime monitoring: NVML sampling and loss/gradient anomaly detectors. No torch import here."""
