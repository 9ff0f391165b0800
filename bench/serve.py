"""`fragua serve` against the server a user would write: a FastAPI endpoint calling
``model.generate`` one request at a time.

Both serve the same registry version (the tiny base plus a LoRA adapter, loaded through the same
code), answer the same chat prompts greedily with the same max_tokens, and are driven over HTTP
by the same clients at 1, 4 and 16 concurrent connections. Reported per side and concurrency:
generated tokens/s and p50/p95 request latency, then Fragua's throughput as a multiple of the
baseline's.

    .venv/bin/python bench/serve.py                      # builds a work dir with one version
    .venv/bin/python bench/serve.py --work-dir W --version fragua-tiny-v1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"tracking": {"mode": "disabled"}, "train": {"max_steps": 2}, "validate": {"max_examples": 4, "min_score": 0.0, "require_beat_base": False}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_work_dir(work: Path) -> str:
    """The tiny base and one published version trained for two steps (the weights do not matter here)."""
    from fragua.jobs.data import ingest_sources
    from fragua.jobs.registry import promote_version, publish_run
    from fragua.jobs.train import train_model
    from fragua.jobs.validate import evaluate_model, record_validation
    from fragua.settings import Settings

    settings = Settings(work_dir=work, **QUICK)
    dataset = ingest_sources(settings)
    trained = train_model(settings, dataset.id)
    candidate = evaluate_model(settings, dataset.id, trained.adapter_dir, name="candidate")
    record_validation(settings, trained.run_id, dataset.id, candidate, None, None, None)
    version = publish_run(settings, trained.run_id).version
    promote_version(settings, version, expected_production=None, reason="serve benchmark")
    return version


def baseline_app(work: Path, version: str):
    """What a user writes first: load the model, answer each request with generate, one at a time."""
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel

    from fragua.inference.choice import load_model, resolve_model
    from fragua.models.templates import generation_prompt, stop_token_ids
    from fragua.settings import Settings

    settings = Settings(work_dir=work, **QUICK)
    loaded = load_model(settings, resolve_model(settings, version=version))
    model, tokenizer = loaded.model, loaded.tokenizer
    lock = threading.Lock()
    app = FastAPI()

    class ChatRequest(BaseModel):
        model: str
        messages: list[dict]
        max_tokens: int = 64
        temperature: float = 0.0

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> dict:
        text = generation_prompt(tokenizer, request.messages)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
        with lock, torch.no_grad():
            output = model.generate(**ids, max_new_tokens=request.max_tokens, do_sample=False, eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
        new = output[0, ids["input_ids"].shape[1] :]
        answer = tokenizer.decode(new, skip_special_tokens=True).strip()
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}], "usage": {"completion_tokens": int(new.shape[0])}}

    return app


def start(command: list[str], port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"server on port {port} not ready after 300 s; see {log}")


async def drive(port: int, model: str, prompts: list[str], clients: int, max_tokens: int) -> dict[str, float]:
    import httpx

    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            prompt = queue.get_nowait()
            begun = time.perf_counter()
            response = await http.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            })
            response.raise_for_status()
            latencies.append(time.perf_counter() - begun)
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
        begun = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        elapsed = time.perf_counter() - begun
    latencies.sort()
    return {
        "tokens_per_s": tokens / elapsed,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, help="A work dir with a published version (default: build one in a temporary folder).")
    parser.add_argument("--version", help="Version to serve (default: the one built, or production).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=4, help="Requests per client at each concurrency (at least 16 in all).")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--baseline-server", nargs=3, metavar=("WORK", "VERSION", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.baseline_server:
        import uvicorn

        work, version, port = args.baseline_server
        uvicorn.run(baseline_app(Path(work), version), host="127.0.0.1", port=int(port), log_level="warning")
        return

    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="fragua-bench-serve-") as scratch:
        work = args.work_dir or Path(scratch) / "work"
        version = args.version
        if args.work_dir is None:
            print("building a work dir with one version ...", flush=True)
            version = build_work_dir(work)
        if version is None:
            from fragua.registry import open_registry
            from fragua.settings import Settings

            production = open_registry(Settings(work_dir=work)).production()
            if production is None:
                raise SystemExit(f"{work}: no production version; pass --version")
            version = production.version
        fragua_port, baseline_port = free_port(), free_port()
        fragua = start(
            [sys.executable, "-m", "fragua.cli", "--work-dir", str(work), "--set", f"serve.port={fragua_port}", "--set", "tracking.mode=disabled", "serve"],
            fragua_port, Path(scratch) / "fragua.log", env,
        )
        baseline = start([sys.executable, __file__, "--baseline-server", str(work), version, str(baseline_port)], baseline_port, Path(scratch) / "baseline.log", env)
        try:
            rows = []
            for clients in args.clients:
                prompts = [f"Question {i}: what does item {i * 7 % 13} mean in this context?" for i in range(max(16, clients * args.requests_per_client))]
                measured = {}
                for name, port in (("baseline", baseline_port), ("fragua", fragua_port)):
                    asyncio.run(drive(port, version, prompts[:clients], clients, args.max_tokens))  # warm-up
                    measured[name] = asyncio.run(drive(port, version, prompts, clients, args.max_tokens))
                rows.append((clients, measured))
        finally:
            for process in (fragua, baseline):
                process.terminate()
                process.wait(timeout=60)

    print(f"\nversion {version}, greedy, max_tokens {args.max_tokens}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| clients | baseline tokens/s | baseline p50 / p95 s | fragua tokens/s | fragua p50 / p95 s | throughput ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for clients, m in rows:
        b, f = m["baseline"], m["fragua"]
        print(
            f"| {clients} | {b['tokens_per_s']:.0f} | {b['p50']:.2f} / {b['p95']:.2f} | {f['tokens_per_s']:.0f} | {f['p50']:.2f} / {f['p95']:.2f} "
            f"| **{f['tokens_per_s'] / b['tokens_per_s']:.2f}x** |"
        )


if __name__ == "__main__":
    main()
