"""The service a user would write instead of Triton: one FastAPI process (uvicorn) that runs
the same ONNX encoder with ONNX Runtime and the same routed index per request, no batching.

It is given its best plain shot: the ONNX Runtime session and the index are loaded once,
requests carry raw float32 tensors (no image decoding, no JSON arrays in), answers are small
JSON, access logging is off, and uvicorn picks uvloop/httptools when they are installed.
`handler="threadpool"` runs the model in Starlette's thread pool (ONNX Runtime and FAISS
release the GIL, so requests overlap); `handler="inline"` runs it on the event loop.

    python -m megaclass.loadtest.benchmarks.baseline_service --onnx encoder.onnx --index index/ --port 8080

`--workers N` runs N uvicorn worker processes (each with its own session and index) behind one
port: the way a FastAPI user scales to the cores without batching.

Endpoints: `GET /info`, `POST /classify?n=N[&top_k=K]` (body: float32 `[N, 1, S, S]`),
`POST /search?n=N[&top_k=K]` (body: float32 `[N, D]`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

Handler = Literal["threadpool", "inline"]


class BaselineModel:
    """Encoder session + routed index, called once per request."""

    def __init__(self, onnx_path: Path, index_dir: Path, threads: int = 0):
        import onnxruntime as ort

        from megaclass.python_backend.index.routed_index import RoutedIndex

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        self.image_size = int(inp.shape[-1])
        self.index = RoutedIndex.load(Path(index_dir))
        self.embedding_dim = int(self.index.dim)

    def classify(self, images: np.ndarray, top_k: int) -> dict:
        (emb,) = self.session.run([self.output_name], {self.input_name: images})
        return self.search(emb, top_k)

    def search(self, embeddings: np.ndarray, top_k: int) -> dict:
        r = self.index.search(np.ascontiguousarray(embeddings, dtype=np.float32), top_k=top_k)
        return {"class_ids": r.class_ids.tolist(), "labels": r.labels.tolist(), "scores": r.scores.tolist()}


def create_app(model: BaselineModel, handler: Handler = "threadpool", max_top_k: int = 100) -> FastAPI:
    """The FastAPI application around `model`."""
    app = FastAPI(title="megaclass baseline (no batching)")

    def tensor(body: bytes, n: int, item_shape: tuple[int, ...]) -> np.ndarray:
        want = n * int(np.prod(item_shape)) * 4
        if n < 1 or len(body) != want:
            raise HTTPException(400, f"body must be {want} bytes of float32 [{n}, {', '.join(map(str, item_shape))}]")
        return np.frombuffer(body, dtype=np.float32).reshape(n, *item_shape)

    async def run(fn, *args):
        return await run_in_threadpool(fn, *args) if handler == "threadpool" else fn(*args)

    def check_k(top_k: int) -> int:
        if not 1 <= top_k <= min(max_top_k, model.index.num_classes):
            raise HTTPException(400, f"top_k must be between 1 and {min(max_top_k, model.index.num_classes)}")
        return top_k

    @app.get("/info")
    def info() -> dict:
        return {"image_size": model.image_size, "embedding_dim": model.embedding_dim, "handler": handler}

    @app.post("/classify")
    async def classify(request: Request, n: int = 1, top_k: int = 5) -> dict:
        images = tensor(await request.body(), n, (1, model.image_size, model.image_size))
        return await run(model.classify, images, check_k(top_k))

    @app.post("/search")
    async def search(request: Request, n: int = 1, top_k: int = 5) -> dict:
        embeddings = tensor(await request.body(), n, (model.embedding_dim,))
        return await run(model.search, embeddings, check_k(top_k))

    return app


ENV_ARGS = "MEGACLASS_BASELINE_ARGS"  # the workers' settings (JSON), for `app_from_env`


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process, from the settings `main` left in the environment."""
    import json
    import os

    a = json.loads(os.environ[ENV_ARGS])
    return create_app(BaselineModel(Path(a["onnx"]), Path(a["index"]), a["threads"]), a["handler"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--handler", choices=["threadpool", "inline"], default="threadpool")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = p.parse_args(argv)
    import json
    import os

    import uvicorn

    if args.workers > 1:  # worker processes build the app themselves (an import string)
        keys = ("onnx", "index", "threads", "handler")
        os.environ[ENV_ARGS] = json.dumps({k: getattr(args, k) for k in keys})
        app = "megaclass.loadtest.benchmarks.baseline_service:app_from_env"
        uvicorn.run(
            app, factory=True, host=args.host, port=args.port, workers=args.workers,
            log_level="warning", access_log=False,
        )  # fmt: skip
        return 0
    app = create_app(BaselineModel(Path(args.onnx), Path(args.index), args.threads), args.handler)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
