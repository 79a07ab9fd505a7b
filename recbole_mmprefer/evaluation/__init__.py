"""Evaluation stage (paper section 4.2; `mmprefer evaluate`): explanation metrics, stability, report tables."""
