"""Training: models, transforms, the lake reader, the DDP loop under torchrun, calibration."""
