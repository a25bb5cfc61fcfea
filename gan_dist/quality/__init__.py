"""Sample quality: metrics.py (FID, KID, precision/recall, class-wise Frechet: math on feature
matrices, no networks), features.py (the feature networks, loaded once and shared across
ranks one way), digits_classifier.py and inception.py (two of them), evaluation.py (the real
reference split, sharded generation, every metric the same on every rank). Imports data,
distributed, config, errors."""
