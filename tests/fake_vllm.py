"""A stand-in for `vllm serve` that speaks the endpoints VllmEngine uses, for protocol tests on
machines without a GPU (tests/test_serve_vllm.py runs it as serve.vllm_executable).

It follows vLLM's OpenAI server where the engine depends on it: the command line it is given,
/health (listening only once "loaded"), bearer auth from VLLM_API_KEY on /v1, /v1/models,
/v1/load_lora_adapter and /v1/unload_lora_adapter (only with --enable-lora and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), streamed /v1/completions with a final usage chunk
under stream_options.include_usage, a 400 naming the maximum context length, and errors as
{"error": {"message", "type", "param", "code"}}. It starts one child process, as vLLM starts
its engine core, so tests can see the whole process group end.

It generates no language: an answer is "<model> heard <the prompt's last word>" followed by
"more" up to max_tokens, one word per token; a prompt counts one token per word.

Switches for failure tests, from the environment: FAKE_VLLM_EXIT=<message> prints the message
and exits 1 while "loading"; FAKE_VLLM_HANG=1 never starts listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--gpu-memory-utilization", type=float, required=True)
    parser.add_argument("--max-num-seqs", type=int, required=True)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-loras", type=int)
    parser.add_argument("--max-cpu-loras", type=int)
    parser.add_argument("--max-lora-rank", type=int)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--max-model-len", type=int, default=2048)
    return parser.parse_known_args(argv)


def error(message: str, kind: str, code: int) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=code)


def build_app(args: argparse.Namespace, extra: list[str], worker: subprocess.Popen[bytes]) -> FastAPI:
    app = FastAPI()
    api_key = os.environ.get("VLLM_API_KEY")
    runtime_lora = args.enable_lora and os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("true", "1")
    adapters: dict[str, str] = {}
    requests: list[dict] = []

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if request.url.path.startswith("/v1") and api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/fake/launch")
    async def launch() -> dict:
        return {
            "argv": sys.argv[1:], "extra": extra, "worker_pid": worker.pid,
            "runtime_lora": runtime_lora, "api_key_set": bool(api_key),
        }

    @app.get("/fake/requests")
    async def seen() -> list[dict]:
        return requests

    @app.get("/v1/models")
    async def models() -> dict:
        cards = [{"id": args.served_model_name, "object": "model", "root": args.model, "parent": None}]
        cards += [{"id": name, "object": "model", "root": path, "parent": args.served_model_name} for name, path in adapters.items()]
        return {"object": "list", "data": cards}

    if runtime_lora:

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Response:
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
            if name in adapters:
                return error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
            if not os.path.isfile(os.path.join(path, "adapter_config.json")):
                return error(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404)
            adapters[name] = path
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Response:
            name = (await request.json()).get("lora_name")
            if name not in adapters:
                return error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            del adapters[name]
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await request.json()
        requests.append(body)
        model = body["model"]
        if model != args.served_model_name and model not in adapters:
            return error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        words = body["prompt"].split()
        if len(words) + body["max_tokens"] > args.max_model_len:
            return error(
                f"This model's maximum context length is {args.max_model_len} tokens. However, you requested "
                f"{len(words) + body['max_tokens']} tokens ({len(words)} in the messages, {body['max_tokens']} in the completion).",
                "BadRequestError", 400,
            )
        answer = [model, "heard", words[-1] if words else ""] + ["more"] * body["max_tokens"]
        answer = answer[: body["max_tokens"]]
        finish = "length" if len(answer) == body["max_tokens"] else "stop"

        def chunk(choices: list[dict], usage: dict | None = None) -> str:
            return "data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "model": model, "choices": choices, "usage": usage}) + "\n\n"

        async def stream():
            for index, word in enumerate(answer):
                if "FAIL-MIDSTREAM" in body["prompt"] and index == 1:
                    yield "data: " + json.dumps({"error": {"message": "CUDA error: an illegal memory access", "type": "InternalServerError", "code": 500}}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
                last = index == len(answer) - 1
                yield chunk([{"index": 0, "text": ("" if index == 0 else " ") + word, "finish_reason": finish if last else None}])
                await asyncio.sleep(0)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk([], {"prompt_tokens": len(words), "completion_tokens": len(answer), "total_tokens": len(words) + len(answer)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def main() -> None:
    args, extra = parse(sys.argv[1:])
    print(f"fake vLLM loading {args.model}", flush=True)
    if message := os.environ.get("FAKE_VLLM_EXIT"):
        print(message, flush=True)
        sys.exit(1)
    # vLLM's engine core runs in a child process of the API server.
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(f"engine core pid {worker.pid}", flush=True)
    if os.environ.get("FAKE_VLLM_HANG"):
        time.sleep(3600)
    time.sleep(0.5)  # the model "loads" before the port opens, as in vLLM
    uvicorn.run(build_app(args, extra, worker), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
