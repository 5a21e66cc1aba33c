"""The exceptions tinyllm raises of its own, all under :class:`TinyLLMError`.

Each also subclasses the built-in a caller would expect (``ValueError`` for a
bad file, a prompt that does not fit, a template that refuses), so code that
catches ``ValueError`` keeps working. The compiled engine raises these same
classes (``tinyllm._tinyllm`` imports them from here).
"""

from __future__ import annotations

__all__ = ["ContextLengthError", "ModelFormatError", "NonFiniteError", "TinyLLMError"]


class TinyLLMError(Exception):
    """The base class of every error tinyllm raises of its own: catch it to
    tell tinyllm's refusals from other failures. (Missing files are still
    ``FileNotFoundError`` and bad arguments ``TypeError``/``ValueError``.)"""

    __module__ = "tinyllm"


class ModelFormatError(TinyLLMError, ValueError):
    """A model or tokenizer file is truncated, corrupt, of an unknown kind, or
    does not fit the model."""

    __module__ = "tinyllm"


class ContextLengthError(TinyLLMError, ValueError):
    """A prompt (or a conversation) is longer than the model's context."""

    __module__ = "tinyllm"


class NonFiniteError(TinyLLMError, RuntimeError):
    """The model computed a NaN or infinite logit: weights that are finite
    but overflow the float range (a corrupt file that passed the load-time
    checks). The generation stops; the model stays usable."""

    __module__ = "tinyllm"
