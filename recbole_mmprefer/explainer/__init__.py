"""The explainer: an LLM explains a user-item pair, grounded in retrieval paths (paper section 3.4)."""
