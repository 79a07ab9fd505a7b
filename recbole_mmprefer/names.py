"""Names that become folder or file names: data sets, report folders, system names.

A name given on the command line (``--dataset``, ``--name``, the NAME of
``--system NAME=FILE``) or to an importer ends up as a path component, e.g.
``dataset/<name>/<name>.inter``. :func:`check_name` lets through only a single
plain component, so no name can reach outside its folder (``../x``), split into
sub-folders (``a/b``) or hide as a dot file.
"""

from __future__ import annotations

import re

from recbole_mmprefer.errors import InputError

MAX_LENGTH = 100
_ALLOWED = re.compile(r"[A-Za-z0-9._-]*")
RULE = (f"a name is a single plain folder name: 1 to {MAX_LENGTH} letters, digits, '.', '_' or '-', starting with a "
        "letter or digit (no '/', '\\', '..' or leading dot), since it becomes a folder and file name")


def _problem(value: str) -> str:
    """What makes ``value`` unsafe, or '' when it is a plain name."""
    if not value:
        return "it is empty"
    if "/" in value or "\\" in value:
        return "it contains a path separator"
    if value in (".", ".."):
        return "it names a folder itself"
    if len(value) > MAX_LENGTH:
        return f"it is {len(value)} characters long"
    if not _ALLOWED.fullmatch(value):
        bad = next(character for character in value if not _ALLOWED.fullmatch(character))
        return f"it contains {bad!r}"
    if not value[0].isalnum():
        return f"it starts with {value[0]!r}"
    return ""


def check_name(value: str, what: str = "Data set name") -> str:
    """``value`` itself when it is a single safe path component, else an :class:`InputError` stating the rule.

    ``what`` says which name it is, e.g. ``"--dataset"``, for the message.
    """
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}; {RULE}")
    problem = _problem(value)
    if problem:
        raise InputError(f"{what} {value!r} is not a plain folder name ({problem}): {RULE}")
    return value
