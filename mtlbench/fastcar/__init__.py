"""FastCAR: label transformation + single-task ResNet-18 regressor (FastCAR paper, sec. 3)."""
