"""What a deploy asks a running `fragua serve` (serve.server_url): reload the aliases, then answer
with the new version, so a version the server cannot load or answer with fails the deploy."""

from __future__ import annotations

import httpx

from fragua.serve.answers import VERSION_HEADER

CHECK_QUESTION = "What can you help me with?"


class ServerCheckFailed(RuntimeError):
    """The server could not be reached, or could not load or answer with the version."""


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


class ServeClient:
    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> "ServeClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    def _post(self, path: str, what: str, **kwargs: object) -> httpx.Response:
        try:
            response = self.http.post(path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise ServerCheckFailed(f"cannot reach the server at {self.url} (serve.server_url) to {what}: {exc}") from exc
        if response.status_code != 200:
            raise ServerCheckFailed(f"the server at {self.url} could not {what}: HTTP {response.status_code}: {_reason(response)}")
        return response

    def reload(self) -> dict:
        """Make the server read the aliases now; returns its routes and pending moves."""
        return self._post("/admin/reload", "reload the registry's aliases").json()

    def check(self, alias: str, version: str) -> str:
        """Reload, require ``alias`` to route to ``version``, and get a short answer by it; returns the answer."""
        state = self.reload()
        routed = state.get("routes", {}).get(alias)
        if routed != version:
            pending = state.get("pending", {}).get(alias) or {}
            why = f": {pending['error']}" if pending.get("error") else ""
            raise ServerCheckFailed(f"the server at {self.url} still routes {alias} to {routed or 'nothing'}, not {version}{why}")
        response = self._post(
            "/v1/chat/completions", f"answer with {version}",
            json={"model": version, "messages": [{"role": "user", "content": CHECK_QUESTION}], "max_tokens": 8, "temperature": 0},
        )
        answered_by = response.headers.get(VERSION_HEADER)
        if answered_by != version:
            raise ServerCheckFailed(f"the server at {self.url} answered a request for {version} with {answered_by}")
        return str(response.json()["choices"][0]["message"]["content"])
