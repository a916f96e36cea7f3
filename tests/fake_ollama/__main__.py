"""``python -m tests.fake_ollama --port 11434``: the emulator on its own."""

from __future__ import annotations

import argparse
import asyncio

from . import ALL_MODELS, DEFAULT_MODELS, FakeOllama


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Ollama emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--first-token-delay", type=float, default=0.05)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--token-count", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=0)
    parser.add_argument("--max-loaded-models", type=int, default=0)
    parser.add_argument("--load-delay", type=float, default=0.0)
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated catalogue names, or 'all'"
    )
    args = parser.parse_args()
    models = ALL_MODELS if args.models == "all" else [m for m in args.models.split(",") if m]
    emulator = FakeOllama(
        models=models,
        first_token_delay=args.first_token_delay,
        token_delay=args.token_delay,
        token_count=args.token_count,
        parallel=args.parallel,
        max_loaded_models=args.max_loaded_models,
        load_delay=args.load_delay,
    )
    print(f"Ollama emulator on http://{args.host}:{args.port}", flush=True)  # noqa: T201
    asyncio.run(emulator.serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
