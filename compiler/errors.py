"""Errors gimlet reports to its users.

A `UserError` is something the user can fix (a bad model, file or flag); the
CLI prints its message alone and exits 1. Anything else escaping the compiler
is a bug in gimlet: exit 2.
"""

from __future__ import annotations

from xdsl.dialects.builtin import FileLineColLoc, NameLoc
from xdsl.ir import Attribute


class UserError(Exception):
    """An error in the user's input, reported as one line (plus optional detail)."""


class UnsupportedOpError(UserError):
    pass


class VerificationError(UserError):
    pass


def describe_location(loc: Attribute | None) -> str | None:
    """`model.py:42` for a location gimlet attached, or None when there is none."""
    if isinstance(loc, NameLoc):
        return describe_location(loc.location)
    if isinstance(loc, FileLineColLoc):
        return f"{loc.filename.data}:{loc.line.data}"
    return None


def module_path(loc: Attribute | None) -> str | None:
    """The torch module path (e.g. `transformer.h.0.attn`) recorded in a location."""
    if isinstance(loc, NameLoc):
        return loc.desc.data
    return None


def with_location(loc: Attribute | None, message: str) -> str:
    where = describe_location(loc)
    return f"{where}: {message}" if where else message
