"""Sequential recommenders of recbole-mmprefer (looked up before RecBole's)."""
