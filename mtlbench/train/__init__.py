"""Training: one loop for FastCAR and every MTL cell."""
