"""tinyllm: run Llama-family language models on your own machine.

>>> import tinyllm
>>> model = tinyllm.Model.default()          # the built-in stories260K
>>> print(model.generate("Once upon a time", max_tokens=50))

``tinyllm.Model(path, tokenizer=None)`` opens llama2.c model files and
tinyllm files; its ``generate``, ``stream``, ``tokenize``, ``detokenize``,
``logits`` and ``chat`` do the rest. ``tinyllm.convert`` writes tinyllm files
with 16-, 8- or 4-bit weights; ``tinyllm.info`` describes a model file;
``tinyllm.eval`` measures a quantized model against its original;
``tinyllm.export`` writes your own PyTorch or NumPy model as a tinyllm file;
``tinyllm.serve`` serves a model over an OpenAI-compatible HTTP API. The
engine is written in Rust and runs with the GIL released.

Every error tinyllm raises of its own is a :class:`TinyLLMError` (and a
``ValueError``); what a model picked when it opened (kernels, template,
tokenizer) is logged at INFO on the ``"tinyllm"`` logger.
"""

from tinyllm._convert import convert, info
from tinyllm._errors import ContextLengthError, ModelFormatError, NonFiniteError, TinyLLMError
from tinyllm._eval import eval
from tinyllm._export import export, export_model
from tinyllm._model import Model, ModelConfig, Stream
from tinyllm._template import ChatTemplate, TemplateError
from tinyllm._tinyllm import available_isas
from tinyllm._tokenizer import StreamDecoder, Tokenizer
from tinyllm._types import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from tinyllm._version import version as _version


def serve(
    model: Model,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    name: str | None = None,
    log_level: str = "info",
) -> None:
    """Serves ``model`` over an OpenAI-compatible HTTP API until interrupted
    (see :func:`tinyllm.server.serve`; needs ``pip install 'tinyllm[server]'``)."""
    from tinyllm.server import serve as run

    run(model, host, port, api_key=api_key, name=name, log_level=log_level)


__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatTemplate",
    "ContextLengthError",
    "Model",
    "ModelConfig",
    "ModelFormatError",
    "NonFiniteError",
    "Stream",
    "StreamDecoder",
    "TemplateError",
    "TinyLLMError",
    "Tokenizer",
    "__version__",
    "available_isas",
    "convert",
    "eval",
    "export",
    "export_model",
    "info",
    "serve",
]

#: The installed package's version (its metadata), e.g. ``"0.1.0"``.
__version__ = _version()
