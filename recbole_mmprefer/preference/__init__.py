"""LLM preference prediction (ExplainRec, design section 4; TALLRec as its baseline)."""
