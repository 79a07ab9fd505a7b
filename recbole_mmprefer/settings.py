"""Typed stage settings: small dataclasses built once from a config (design section 2, "defaults in YAML").

Each stage reads its keys through one :class:`StageSettings` subclass, the way
peft composes ``LoraConfig``: a field ``r`` of a class whose ``PREFIX`` is
``explainer_lora_`` is the config key ``explainer_lora_r`` (``KEYS`` names
the exceptions). :meth:`StageSettings.from_config` takes each key from a
RecBole ``Config``, a dict or None, falling back to the shipped default of
``properties/*.yaml`` (then RecBole's own): the dataclasses declare no
defaults of their own. ``__post_init__`` validates, with the key and its valid
range or choices in the message, so a bad value fails where it is read.
:meth:`StageSettings.to_config` gives the keys back (what a trained explainer
saves beside its weights).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Sequence, Type, TypeVar

import numpy as np

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.resources import stage_setting

S = TypeVar("S", bound="StageSettings")


class StageSettings:
    """Base of the typed settings dataclasses; see the module docstring."""

    PREFIX: ClassVar[str] = ""
    KEYS: ClassVar[Dict[str, str]] = {}

    @classmethod
    def key(cls, name: str) -> str:
        """The config key of field ``name``."""
        return cls.KEYS.get(name, cls.PREFIX + name)

    @classmethod
    def from_config(cls: Type[S], config=None, **overrides: Any) -> S:
        """The settings of ``config`` (a RecBole Config, a dict or None); ``overrides`` replace fields."""
        values = {field.name: stage_setting(config, cls.key(field.name))
                  for field in dataclasses.fields(cls) if field.init and field.name not in overrides}
        return cls(**values, **overrides)

    @classmethod
    def from_keys(cls: Type[S], keys: Dict[str, Any]) -> S:
        """The settings saved by :meth:`to_config` (missing keys take the shipped defaults)."""
        return cls.from_config(dict(keys))

    def to_config(self) -> Dict[str, Any]:
        """Field values by config key."""
        return {self.key(field.name): getattr(self, field.name) for field in dataclasses.fields(self) if field.init}


# -- validation ----------------------------------------------------------------------------------------


def _range(minimum, maximum) -> str:
    if maximum is None:
        return f">= {minimum}"
    return f"in {minimum}..{maximum}"


def check_int(key: str, value, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an int within [minimum, maximum]; InputError naming ``key`` and the range otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{key} must be an integer{' ' + _range(minimum, maximum) if minimum is not None else ''}, "
                         f"got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputError(f"{key} must be an integer {_range(minimum, maximum)}, got {value!r}")
    return int(value)


def check_optional_int(key: str, value, minimum: int = 0) -> Optional[int]:
    """None, or an int >= minimum."""
    return None if value is None else check_int(key, value, minimum)


def check_float(key: str, value, minimum: Optional[float] = None, maximum: Optional[float] = None,
                below_maximum: bool = False, above_minimum: bool = False) -> float:
    """``value`` as a float in the range (bounds inclusive unless ``above_minimum`` / ``below_maximum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{key} must be a number, got {value!r}")
    value = float(value)
    low_ok = minimum is None or (value > minimum if above_minimum else value >= minimum)
    high_ok = maximum is None or (value < maximum if below_maximum else value <= maximum)
    if not (low_ok and high_ok and np.isfinite(value)):
        low = "" if minimum is None else f"{'>' if above_minimum else '>='} {minimum}"
        high = "" if maximum is None else f"{'<' if below_maximum else '<='} {maximum}"
        raise InputError(f"{key} must be a number {' and '.join(part for part in (low, high) if part)}, "
                         f"got {value!r}")
    return value


def check_choice(key: str, value, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; InputError listing them otherwise."""
    if value not in choices:
        raise InputError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return str(value)


def check_bool(key: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{key} must be True or False, got {value!r}")
    return bool(value)


def check_str_list(key: str, value) -> list:
    """A list of strings (one string becomes a list of one)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise InputError(f"{key} must be a list of names, got {value!r}")
    return list(value)


# -- saved beside a trained model --------------------------------------------------------------------


def write_settings_file(path: Path, keys: Dict[str, Any]) -> Path:
    """The keys a trained model depends on, as sorted JSON (``explainer_config.json``, ...)."""
    Path(path).write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def read_settings_file(path: Path, what: str, command: str) -> Dict[str, Any]:
    """Keys saved by :func:`write_settings_file`; MissingInputError naming the command that writes them."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"No {path.name} in {path.parent}: it is not a {what} (`{command}` writes one)")
    return json.loads(path.read_text(encoding="utf-8"))
