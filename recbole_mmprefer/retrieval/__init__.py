"""Retrieval of explainable paths (paper section 3.3, Algorithm 1): interaction graph, subgraph, top-k paths."""
