"""``turnrl serve MODEL``: an OpenAI-compatible chat-completions server on the built-in
engine, so a trained model is usable from any OpenAI client and evaluable over HTTP.

Endpoints: ``POST /v1/chat/completions`` (no streaming, no tools), ``GET /v1/models``,
``GET /health``. One worker thread owns the engine and batches continuously: a request
joins the running batch at the next decode step and leaves it (its reply returned) as
soon as it is done; rows sample with their own settings, seed and token limit. With the
prefix cache (``--prefix-cache-tokens``), a finished row's KV is kept by the token ids it
holds, so a multi-turn client's next request encodes only what the last one did not
hold. Greedy (``temperature: 0``) replies equal the in-process engine's.
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from turnrl.engine.base import GenRequest, SamplingParams
from turnrl.engine.continuous import ContinuousBatch
from turnrl.engine.hf import HFEngine
from turnrl.types import Message


#: tokens of KV the server keeps for the next turns (SmolLM2-135M, fp32: 45 KiB a token, 1.4 GiB)
DEFAULT_PREFIX_CACHE_TOKENS = 32768


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, logit_bias=None, ...)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=64)
    seed: int | None = None
    stream: bool = False


class _EngineThread:
    """One daemon thread owns the engine and serves a queue of (ids, sampling, future)."""

    def __init__(self, engine, max_batch: int = 32, wait_s: float = 0.01):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="turnrl-engine", daemon=True)
        self.thread.start()

    def submit(self, ids: list[int], sp: SamplingParams) -> Future:
        """``sp.seed`` and ``sp.max_new_tokens`` are this request's own."""
        fut: Future = Future()
        self.q.put((ids, sp, fut))
        return fut

    def _loop(self) -> None:
        raise NotImplementedError


class Batcher(_EngineThread):
    """Owns the engine: requests join the running batch between decode steps (at most
    ``max_batch`` decoding at once) and each future resolves as soon as its row is done.
    When the batch is empty, the first request waits ``wait_s`` for others to start with it.

    Joining costs a prefill call and a copy of the running rows' cache, whatever the number
    that join, so arrivals are admitted together: once they are a quarter of the running
    rows, or the oldest has waited ``admit_after_steps`` decode steps. A multi-turn client's
    conversations come back a few steps apart; admitting each one alone made 33 prefill calls
    where the in-process engine makes 6 (a one-off count of bench/eval_default.py's HTTP run)."""

    def __init__(self, engine, max_batch: int = 32, wait_s: float = 0.01, admit_after_steps: int = 4):
        self.batch = ContinuousBatch(engine)
        self.admit_after_steps = admit_after_steps
        self.pending: list[tuple[int, tuple]] = []  # (decode step it arrived at, item), oldest first
        self.steps = 0
        super().__init__(engine, max_batch, wait_s)

    def _arrivals(self) -> list:
        if not len(self.batch) and not self.pending:  # idle: block for one, then wait_s for company
            self.pending.append((self.steps, self.q.get()))
            deadline = time.monotonic() + self.wait_s
            while len(self.pending) < self.max_batch:
                try:
                    self.pending.append((self.steps, self.q.get(timeout=max(0.0, deadline - time.monotonic()))))
                except queue.Empty:
                    break
        while True:  # decoding: take what is waiting, do not wait
            try:
                self.pending.append((self.steps, self.q.get_nowait()))
            except queue.Empty:
                break
        running = len(self.batch)
        due = self.pending and (len(self.pending) * 4 >= running
                                or self.steps - self.pending[0][0] >= self.admit_after_steps)
        room = self.max_batch - running
        if not due or room <= 0:
            return []
        items, self.pending = [item for _, item in self.pending[:room]], self.pending[room:]
        return items

    def _loop(self) -> None:
        while True:  # a daemon thread: it ends with the server process
            items = self._arrivals()
            self.steps += 1
            try:
                self.batch.add(items)
                for fut, res in self.batch.step():
                    fut.set_result(res)
            except Exception as e:  # a failure fails the requests in the batch, never the server
                for fut in {id(f): f for f in self.batch.reset() + [f for _, _, f in items]}.values():
                    if not fut.done():
                        fut.set_exception(e)


class GenerateBatcher(_EngineThread):
    """For an engine without step-level decoding (vLLM, whose own scheduler batches inside
    one ``generate`` call): requests that arrive within ``wait_s`` and share sampling
    settings run as one ``generate``."""

    def _loop(self) -> None:
        held: list = []
        while True:  # a daemon thread: it ends with the server process
            first = held.pop(0) if held else self.q.get()
            batch, deadline = [first], time.monotonic() + self.wait_s
            rest = []
            for item in held:  # requests held back from an earlier batch go first
                (batch if _same(item[1], first[1]) and len(batch) < self.max_batch else rest).append(item)
            held = rest
            while len(batch) < self.max_batch:
                try:
                    item = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                (batch if _same(item[1], first[1]) else held).append(item)
            try:
                # each request keeps its own token limit and its own seeded sampler
                requests = [GenRequest(i, ids, sp.max_new_tokens, sp.seed) for i, (ids, sp, _) in enumerate(batch)]
                results = self.engine.generate(requests, first[1])
                for (_, _, fut), res in zip(batch, results):
                    fut.set_result(res)
            except Exception as e:  # a failed batch fails its requests, never the server
                for _, _, fut in batch:
                    fut.set_exception(e)
            finally:
                self.engine.release()


def _same(a: SamplingParams, b: SamplingParams) -> bool:
    """Requests batch together when only their seeds and token limits differ: each row
    stops at its own limit and samples from its own seed, so a seeded reply does not
    depend on what it was batched with."""
    return replace(a, seed=0, max_new_tokens=1) == replace(b, seed=0, max_new_tokens=1)


def create_app(engine, chat, model_name: str, max_context: int, max_batch: int = 32):
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="turnrl serve")

    def error(code: int, message: str) -> JSONResponse:  # OpenAI's error shape, which its clients read
        kind = "invalid_request_error" if code < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=code)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    def _invalid(request, exc):
        msgs = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()]
        return error(400, "; ".join(msgs))
    batcher = (Batcher if isinstance(engine, HFEngine) else GenerateBatcher)(engine, max_batch=max_batch)
    created = int(time.time())

    @app.get("/health")
    def health():
        cache = getattr(engine, "prefix_cache", None)
        return {"status": "ok", "prefix_cache": cache.stats() if cache is not None else None}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "turnrl"}]}

    @app.post("/v1/chat/completions")
    def completions(req: ChatRequest):
        if req.model != model_name:
            raise HTTPException(404, f"model {req.model!r} is not served here; this server has {model_name!r}")
        if req.stream:
            raise HTTPException(400, "stream=true is not supported by turnrl serve")
        ids = chat.prompt_ids([Message(m.role, m.content) for m in req.messages])
        room = max_context - len(ids)
        if room < 1:
            raise HTTPException(400, f"the prompt has {len(ids)} tokens; this server's context limit is {max_context}")
        max_new = min(req.max_completion_tokens or req.max_tokens or room, room)
        base_seed = req.seed if req.seed is not None else 0
        futures = []
        for i in range(req.n):
            greedy = req.temperature == 0
            sp = SamplingParams(temperature=req.temperature, top_p=1.0 if greedy else req.top_p,
                                top_k=0 if greedy else req.top_k, max_new_tokens=max_new,
                                seed=0 if greedy else base_seed + i)
            futures.append(batcher.submit(ids, sp))
        results = [f.result() for f in futures]
        choices = [{"index": i, "message": {"role": "assistant", "content": chat.decode_action(r.token_ids)},
                    "finish_reason": "stop" if r.stopped else "length", "logprobs": None}
                   for i, r in enumerate(results)]
        completion = sum(len(r.token_ids) for r in results)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}}

    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          max_context: int = 2048, max_batch: int = 32, threads: int = 0,
          prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS, engine: str = "hf") -> None:
    import torch
    import uvicorn

    from turnrl.build import build_engine, load_for_inference

    if engine == "vllm":  # before the model loads
        from turnrl.engine.vllm import require_vllm

        require_vllm()
    if threads:
        torch.set_num_threads(threads)
    engine, chat = build_engine(*load_for_inference(model), engine,
                                prefix_cache_tokens=prefix_cache_tokens if engine == "hf" else 0)
    app = create_app(engine, chat, name or model, max_context=max_context, max_batch=max_batch)
    print(f"turnrl serve: {name or model} on http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
