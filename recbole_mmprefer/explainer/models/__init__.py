"""Explanation baselines of recbole-mmprefer (issue 14): one file per model, resolved by name like the recommenders."""
