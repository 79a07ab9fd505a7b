"""Recommend and explain for a user: the session (Python), the CLI's recommend/explain and `mmprefer serve`."""

from recbole_mmprefer.serving.session import RecommendSession

__all__ = ["RecommendSession"]
