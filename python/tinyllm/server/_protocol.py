"""The request bodies the server accepts, as pydantic models of OpenAI's
shapes. Fields a client may send but tinyllm ignores (``user``, ``store``,
``metadata``, ...) pass; a field that asks for something tinyllm cannot do
yet is refused with a clear message instead of being dropped silently."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: OpenAI allows up to 4 stop sequences.
MAX_STOP = 4


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    def as_dict(self) -> dict[str, Any] | None:
        """The format as :meth:`tinyllm.Model.stream` takes it."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a json_schema field")
        return {"type": "json_schema", "json_schema": {"schema": self.json_schema.schema_}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One message of a conversation. ``content`` may be a string or a list
    of text parts (joined); other parts (images, audio) are refused."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message as a chat template sees it."""
        out = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            out["content"] = "".join(p.text for p in self.content)
        elif self.content is None:
            out["content"] = ""
        if out["role"] == "developer":  # OpenAI's newer name for "system"
            out["role"] = "system"
        return out


class _Sampling(_Request):
    """What chat and text completions share."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None
    # Beyond OpenAI's fields, as llama.cpp's and vLLM's servers take them.
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    # Constraints beyond response_format: a Lark or GBNF grammar, a regex.
    grammar: str | None = None
    regex: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if len(v) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(v)}")
            if any(not s for s in v):
                raise ValueError("a stop sequence must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        for token, bias in (v or {}).items():
            if token < 0:
                raise ValueError(f"token ids are >= 0, got {token}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {token} must be in [-100, 100], got {bias}")
        return v

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`tinyllm.Model.stream`."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": self.logit_bias,
            "stop": self.stop,
            "grammar": self.grammar,
            "regex": self.regex,
            "response_format": None
            if self.response_format is None
            else self.response_format.as_dict(),
        }


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None

    def limit(self) -> int | None:
        """The most tokens to generate (None: until the context is full)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
