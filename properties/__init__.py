"""Package data: YAML defaults shipped with recbole-mmprefer (see recbole_mmprefer/resources.py)."""
