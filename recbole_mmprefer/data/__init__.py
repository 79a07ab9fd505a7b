"""Data stage (paper section 4.1): importers, the explanation table, node profiles and text, item modality features."""
