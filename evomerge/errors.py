"""One exception root. Messages name the key path / tensor / file, state the rule, suggest a fix."""

import reprlib


class EvomergeError(Exception):
    """Base class of every error evomerge raises on bad input or a failed step."""


class RecipeError(EvomergeError):
    """A recipe is malformed: the message starts with the key path, e.g. `models[2].parameters.density`."""


class MergeError(EvomergeError):
    """A merge cannot run: missing model or tensor, shape mismatch, unreadable file."""


class EvaluationError(EvomergeError):
    """A candidate could not be scored: NaN/inf, out of memory, timeout, bad task."""


class ConfigError(EvomergeError):
    """A search / eval configuration is invalid."""


class SearchError(EvomergeError):
    """A search run cannot start or continue (e.g. storage or run directory problems)."""


class UsageError(EvomergeError):
    """A command line is malformed: an unknown option, a missing or badly typed argument."""


# The longest value an error message quotes: enough to recognise a path, a number or a short
# list; a hostile value (a YAML alias expanded to millions of entries, a megabyte string) is
# cut here, before its whole repr is ever built.
PREVIEW_CHARS = 80
_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel, _PREVIEW.maxlong = 3, 40
_PREVIEW.maxlist = _PREVIEW.maxtuple = _PREVIEW.maxdict = _PREVIEW.maxset = 6
_PREVIEW.maxstring = _PREVIEW.maxother = PREVIEW_CHARS


def preview(value: object) -> str:
    """A short repr of `value` for an error message (at most PREVIEW_CHARS + 3 characters).

    reprlib bounds the work by depth and items, so a huge or deeply shared structure costs
    no more than a small one.
    """
    try:
        text = _PREVIEW.repr(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


# The most characters of an error line printed by the command line: messages embed previews
# and file names, so a longer one means something unbounded slipped in.
MESSAGE_CHARS = 1000


def one_line(message: str) -> str:
    """An error message as a single line of at most MESSAGE_CHARS characters."""
    line = " ".join(message.split())
    return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS] + "..."


def preview_key(key: object) -> str:
    """A mapping key as it goes into a key path (`models[0].parameters.<key>`), cut short."""
    text = key if isinstance(key, str) else preview(key)
    return text if len(text) <= 40 else text[:40] + "..."
