"""Model stage: joint residual encoding (semantic IDs) and MMPSASRec."""
