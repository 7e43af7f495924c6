"""The tissue network (default method): a context-aware U-Net ensemble whose class probabilities are adapted to each scan by a per-slice SVGMM."""
