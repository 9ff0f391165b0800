"""Section ``validate.judge``: the model that reads each answer against its reference."""

from __future__ import annotations

from pydantic import Field, model_validator

from fragua.settings.base import Section


class JudgeSettings(Section):
    """Who judges: a local model (folder or registry version) or an OpenAI-compatible endpoint."""

    model: str | None = Field(
        None,
        min_length=1,
        description=(
            "The judge. Without endpoint: a local model folder or a registry version name (e.g. 'fragua-small-v4'), run "
            "with Fragua's own generation. With endpoint: the model name the endpoint serves (e.g. 'gpt-4o-mini', a vLLM "
            "model, or a `fragua serve` alias such as 'production'). None: no judge, so judge_score and the win rate against "
            "production are not measured."
        ),
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of an OpenAI-compatible API, up to /v1 (e.g. 'https://api.openai.com/v1', 'http://127.0.0.1:8000/v1'); None: model is local.",
    )
    api_key_block: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Name of the Prefect Secret block holding the endpoint's API key, sent as a Bearer token (never logged); None sends no key.",
    )
    max_new_tokens: int = Field(192, ge=16, le=4096, description="Longest judge reply, in tokens: the verdict line and the missing facts.")
    timeout_s: float = Field(120.0, gt=0.0, le=3600.0, description="Seconds one endpoint request may take before the judge counts as unreachable.")
    concurrency: int = Field(4, ge=1, le=256, description="Endpoint requests in flight at once; for a local judge, prompts per generation batch.")

    @property
    def configured(self) -> bool:
        return self.model is not None

    @model_validator(mode="after")
    def _endpoint_needs_model(self) -> JudgeSettings:
        if self.endpoint is not None and self.model is None:
            raise ValueError("validate.judge.endpoint is set without validate.judge.model: name the model the endpoint serves")
        if self.api_key_block is not None and self.endpoint is None:
            raise ValueError("validate.judge.api_key_block is set without validate.judge.endpoint: a local judge needs no key")
        return self
