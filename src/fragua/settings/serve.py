"""The ``serve`` section: the OpenAI-compatible server (`fragua serve`), its engine and its limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from fragua.settings.base import Section

# The `vllm serve` arguments Fragua sets itself, and why each may not be given again.
VLLM_MANAGED_FLAGS = {
    "--host": "vLLM listens on 127.0.0.1 only; clients reach it through fragua serve",
    "--port": "a free port is chosen",
    "--api-key": "a fresh key is made for each process",
    "--served-model-name": "versions are served under their names",
    "--enable-lora": "on for adapter versions",
    "--max-loras": "set serve.vllm_max_loras",
    "--max-cpu-loras": "set serve.vllm_max_loras",
    "--max-lora-rank": "set serve.vllm_max_lora_rank",
    "--gpu-memory-utilization": "set serve.vllm_gpu_memory_utilization",
    "--max-num-seqs": "set serve.max_batch_size",
    "--trust-remote-code": "set train.trust_remote_code",
}


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
    max_batch_size: int = Field(16, ge=1, le=1024, description="Requests decoded together in one step (vLLM's --max-num-seqs with serve.engine 'vllm'); larger batches raise throughput and each request's latency.")
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

    vllm_executable: str | None = Field(
        None, min_length=1,
        description="The `vllm` command for serve.engine 'vllm'; None finds it beside this Python or on PATH. Point it at another "
        "environment's vllm when vLLM's pinned torch is kept apart from Fragua's.",
    )
    vllm_max_loras: int = Field(
        4, ge=1, le=256,
        description="Adapter versions loaded at once into one vLLM process (vLLM's --max-loras and --max-cpu-loras); the least "
        "recently used idle one is unloaded beyond it. Each slot reserves GPU memory for an adapter of vllm_max_lora_rank.",
    )
    vllm_max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = Field(
        64, description="Largest adapter rank (train.lora.r) vLLM accepts (--max-lora-rank); a version of a higher rank is refused with this field named.",
    )
    vllm_max_bases: int = Field(
        1, ge=1, le=16,
        description="vLLM processes kept running at once, one per base model (a full fine-tune is its own base); a version on "
        "another base stops the least recently used idle process beyond it. They share vllm_gpu_memory_utilization.",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1,
        description="Share of the GPU's memory all vLLM processes together take for weights and KV cache (split evenly over vllm_max_bases).",
    )
    vllm_startup_timeout_s: float = Field(
        900, gt=0, le=7200,
        description="How long a vLLM process may take to load its base model and answer /health before the version is refused (large models take minutes).",
    )
    vllm_extra_args: list[str] = Field(
        default_factory=list,
        description="More arguments for `vllm serve` (e.g. ['--max-model-len', '8192', '--tensor-parallel-size', '2']); the "
        "arguments Fragua sets itself (host, port, LoRA, memory, batch size) are refused here, use their serve fields.",
    )

    @model_validator(mode="after")
    def _limits_fit(self) -> ServeSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"serve.default_max_tokens ({self.default_max_tokens}) exceeds serve.max_tokens_limit ({self.max_tokens_limit})")
        return self

    @model_validator(mode="after")
    def _extra_args_leave_managed_flags(self) -> ServeSettings:
        given = {argument.split("=", 1)[0] for argument in self.vllm_extra_args}
        managed = {flag: why for flag, why in VLLM_MANAGED_FLAGS.items() if flag in given}
        if managed:
            flags = ", ".join(f"{flag} ({why})" for flag, why in managed.items())
            raise ValueError(f"serve.vllm_extra_args sets {flags}; Fragua passes these to vLLM itself, so remove them from vllm_extra_args")
        return self
