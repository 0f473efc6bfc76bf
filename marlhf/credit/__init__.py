"""Credit assignment: advantages, the estimator registry, turn-level credit, KL, VinePPO and the
truth."""
