"""One exception root. Messages name the key path / tensor / file, state the rule, suggest a fix."""


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
