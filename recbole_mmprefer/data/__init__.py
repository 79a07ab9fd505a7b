"""Data stage: item modality features (and, later, importers and profiles)."""
