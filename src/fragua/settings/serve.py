"""The ``serve`` section: the OpenAI-compatible server (`fragua serve`), its engine and its limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from fragua.settings.base import Section


class ServeSettings(Section):
    host: str = Field("127.0.0.1", description="Interface `fragua serve` listens on; 0.0.0.0 to accept other machines (set api_key then).")
    port: int = Field(8000, ge=1, le=65535, description="Port of `fragua serve`.")
    api_key: SecretStr | None = Field(None, description="Bearer token clients must send (Authorization: Bearer …); None with api_key_block unset means no authentication.")
    api_key_block: str | None = Field(
        None, pattern=r"^[a-z0-9-]+/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Prefect Secret block holding the bearer token, as 'secret/NAME'; replaces api_key.",
    )
    default_model: str = Field("production", description="Alias or version a request gets when it names none (OpenAI clients always send one; 'production' follows deploys).")
    engine: Literal["local", "vllm"] = Field(
        "local", description="'local' batches requests in this process with transformers (CPU or GPU); 'vllm' starts vLLM's OpenAI server (CUDA only) and loads adapters into it.",
    )
    max_batch_size: int = Field(16, ge=1, le=1024, description="Requests decoded together in one step of the local engine; larger batches raise throughput and each request's latency.")
    max_queued: int = Field(256, ge=1, description="Requests waiting for a batch slot before new ones are refused with 429 (overload), so latency stays bounded.")
    memory_budget_mb: int = Field(
        4096, ge=1, description="Weights kept loaded (base models counted once, however many adapter versions share them); the least recently used idle version is unloaded beyond it.",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 beyond).")
    max_prompt_tokens: int = Field(4096, ge=1, description="Longest prompt accepted, in tokens (400 beyond); the model's context length also applies.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for (400 beyond).")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that sets none (capped by the model's context).")
    watch_interval_s: float = Field(2.0, gt=0, le=300, description="How often the server reads the registry's aliases, so a deploy or rollback takes effect without a restart.")
    log_requests: bool = Field(False, description="Keep every prompt and answer in the intake database (for review and `fragua import-data`); off, only counts, latency and feedback are kept.")
    recent_responses: int = Field(
        10_000, ge=1, le=10_000_000,
        description="Answers kept in memory by response id, so feedback with a correction knows the question even when log_requests is off; older ones can still be rated through the serving log.",
    )
    shutdown_grace_s: float = Field(30.0, ge=0, le=3600, description="On SIGTERM, how long answers in progress may take to finish before the server stops anyway.")
    check_timeout_s: float = Field(
        300.0, gt=0, le=3600,
        description="How long a deploy waits for the server at server_url to load the new version and answer with it (loading includes downloading it).",
    )
    server_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/.*)?$",
        description="URL of a running `fragua serve` (e.g. http://127.0.0.1:8000): deploys and rollbacks tell it to reload aliases and check the new version answers.",
    )

    @model_validator(mode="after")
    def _limits_fit(self) -> ServeSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"serve.default_max_tokens ({self.default_max_tokens}) exceeds serve.max_tokens_limit ({self.max_tokens_limit})")
        return self
