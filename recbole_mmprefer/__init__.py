"""recbole-mmprefer: MMP-Refer explainable recommendation as a RecBole plugin.

The pipeline (design section 2): item features -> semantic IDs -> MMPSASRec ->
retrieval paths -> explainer -> evaluation. Each stage reads the files the
previous one wrote under ``<checkpoint_dir>/<dataset>/``.
"""

__version__ = "0.1.0"
