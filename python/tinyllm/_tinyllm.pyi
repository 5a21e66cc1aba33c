"""Type stubs of the compiled module ``tinyllm._tinyllm`` (checked against
the built module by ``mypy.stubtest`` in the tests)."""

from collections.abc import Callable
from typing import Any, final

import numpy as np

# Defined in Python, re-exported by the compiled module.
from tinyllm._errors import ContextLengthError as ContextLengthError
from tinyllm._errors import ModelFormatError as ModelFormatError

__all__ = [
    "ContextLengthError",
    "Engine",
    "Llama2cTokenizer",
    "ModelFormatError",
    "Stream",
    "available_isas",
    "convert",
    "file_info",
    "gguf_metadata",
    "isa",
    "kernel_bandwidth",
    "kernel_weight_types",
    "metal_available",
    "read_bandwidth",
]

@final
class Engine:
    def __new__(
        cls,
        path: str,
        *,
        n_threads: int | None = None,
        context_length: int | None = None,
        max_batch: int | None = None,
        max_sequences: int | None = None,
        kv_cache: str = "f16",
        device: str = "auto",
    ) -> Engine: ...
    def use_llama2c_tokenizer(self, path: str | None = None) -> Llama2cTokenizer: ...
    def set_pieces(
        self, pieces: list[bytes], strip_space_at_start: bool, bos_id: int | None = None
    ) -> None: ...
    def embedded_tokenizer(self) -> tuple[str, str] | None: ...
    def config(self) -> dict[str, Any]: ...
    def info(self) -> dict[str, Any]: ...
    def logits(self, ids: list[int]) -> np.ndarray[Any, np.dtype[np.float32]]: ...
    def hidden(self, ids: list[int]) -> np.ndarray[Any, np.dtype[np.float32]]: ...
    def generate(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repeat_penalty: float,
        seed: int,
        stop: list[str],
        stop_ids: list[int] | None = None,
        pin: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: list[tuple[int, float]] = ...,
        logprobs: int | None = None,
        grammar: tuple[str, str] | None = None,
    ) -> Stream: ...
    def enable_grammars(
        self, tokens: list[bytes], specials: list[tuple[int, str]], ends: list[int]
    ) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...
    def unpin(self, pin: int) -> None: ...

@final
class Stream:
    def __iter__(self) -> Stream: ...
    def __repr__(self) -> str: ...
    def __next__(self) -> str: ...
    def cancel(self) -> None: ...
    def take_logprobs(self) -> list[tuple[int, float, list[tuple[int, float]]]]: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def stats(self) -> dict[str, Any]: ...

def available_isas() -> list[str]: ...
def metal_available() -> bool: ...
def isa() -> str: ...
def convert(
    src: str,
    dst: str,
    quant: str,
    tokenizer: str | None = None,
    n_threads: int | None = None,
    progress: Callable[[int, int, str], object] | None = None,
    hf_tokenizer: tuple[str, str] | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]: ...
def file_info(path: str) -> dict[str, Any]: ...
def gguf_metadata(path: str) -> dict[str, Any]: ...

@final
class Llama2cTokenizer:
    def __new__(cls, path: str) -> Llama2cTokenizer: ...
    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def piece(self, id: int) -> bytes: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...

def read_bandwidth(
    n_threads: int | None = None, bytes: int | None = None, reps: int = 5
) -> float: ...
def kernel_weight_types() -> list[str]: ...
def kernel_bandwidth(
    weight_type: str,
    isa: str | None = None,
    bytes: int | None = None,
    cols: int = 2048,
    seconds: float = 0.2,
) -> dict[str, Any]: ...
