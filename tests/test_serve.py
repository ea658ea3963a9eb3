"""``turnrl serve`` as a real server in a subprocess, driven by the official openai client."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from turnrl.config import load_config
from turnrl.endpoint import ChatEndpoint
from turnrl.evaluate import EngineRunner, evaluate
from turnrl.types import Message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], timeout_s: float = 180, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``turnrl serve smollm2-135m ARGS`` on a free port, once ``/health`` answers: (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "turnrl.cli", "serve", "smollm2-135m", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"turnrl serve {' '.join(args)} did not come up:\n{proc.stdout.read()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    proc, url = start_server(["--name", "smol", "--threads", "1", "--max-context", "512"])
    yield url + "/v1"
    proc.terminate()
    proc.wait(timeout=30)


def test_http_eval_matches_the_in_process_engine_with_greedy_decoding(server, tokenizer):
    from turnrl.build import build_engine
    from turnrl.models import load_model

    cfg = load_config("configs/ufo_demo.toml", ["--eval.num_tasks", "6", "--eval.pass_k", "0", "--env.max_turns", "3"])
    engine, chat = build_engine(load_model("smollm2-135m"), tokenizer)
    local = evaluate(EngineRunner(engine, chat, name="local"), cfg)
    remote = evaluate(ChatEndpoint(server, concurrency=3), cfg)  # the model name comes from /v1/models
    assert remote.meta["model"] == f"smol @ {server}"
    assert [e["seed"] for e in remote.episodes] == [e["seed"] for e in local.episodes] == list(range(6))
    for a, b in zip(local.episodes, remote.episodes):
        assert [t["text"] for t in a["turns"]] == [t["text"] for t in b["turns"]], a["seed"]
        assert [t["tokens"] for t in a["turns"]] == [t["tokens"] for t in b["turns"]], a["seed"]
    for k in ("succ@1", "succ@3", "self_correction_rate", "repeated_answer_rate", "invalid_format_rate", "tokens_per_episode"):
        assert remote.metrics[k] == local.metrics[k], k
    assert remote.metrics["errored_episodes"] == 0
    cache = json.load(urllib.request.urlopen(server.removesuffix("/v1") + "/health", timeout=5))["prefix_cache"]
    assert cache["max_tokens"] == 32768 and 0 < cache["tokens"] <= 32768
    assert cache["hit_tokens"] > cache["lookup_tokens"] / 2  # later turns started from their earlier turns' KV


def test_chat_completions_api(server, chat):
    client = openai.OpenAI(base_url=server, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list()] == ["smol"]
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    r = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=3, n=2)
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content  # greedy
    assert r.choices[0].finish_reason == "length"  # 3 tokens are too few to finish
    assert r.usage.prompt_tokens == len(chat.prompt_ids([Message("user", msgs[0]["content"])]))
    assert r.usage.completion_tokens == 6
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here; this server has 'smol'"):
        client.chat.completions.create(model="gpt-4", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="stream=true is not supported"):
        client.chat.completions.create(model="smol", messages=msgs, stream=True)
    with pytest.raises(openai.BadRequestError, match="context limit is 512"):
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi " * 600}])
    with pytest.raises(openai.BadRequestError, match="messages: List should have at least 1 item"):
        client.chat.completions.create(model="smol", messages=[])


def test_a_model_backed_simulated_user_over_http(server):
    from turnrl.build import build_user
    from turnrl.envs import ArithmeticTasks, FeedbackEnv

    e = FeedbackEnv(ArithmeticTasks("eval"), user=build_user(f"{server}#smol", persona="a terse tutor"))
    e.reset(0)
    s = e.step("The answer is 90")
    assert s.info["sim_error"] is None and s.info["sim_tokens"] > 0 and s.info["sim_latency_s"] > 0
    assert s.messages[0].content and "103" not in s.messages[0].content


def test_requests_with_different_token_limits_share_one_batch(lively_model, tokenizer, chat):
    from turnrl.engine import HFEngine, SamplingParams
    from turnrl.serve import Batcher

    shapes = []
    hook = lively_model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    batcher = Batcher(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id), wait_s=0.5)
    ids = chat.prompt_ids([Message("user", "Hi")])
    futures = [batcher.submit(ids, SamplingParams(temperature=0, max_new_tokens=n)) for n in (3, 7)]
    a, b = (f.result(timeout=60) for f in futures)
    hook.remove()
    assert shapes[0] == (1, len(ids))  # the same prompt, encoded once for both
    assert shapes[1:3] == [(2, 1), (2, 1)]  # then decoded together
    assert len(a.token_ids) == 3 and len(b.token_ids) == 7 and a.token_ids == b.token_ids[:3]


def test_a_request_arriving_mid_batch_joins_it_and_returns_first(lively_model, tokenizer, chat):
    from turnrl.engine import HFEngine, PrefixCache, SamplingParams
    from turnrl.serve import Batcher

    eng = HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id, prefix_cache=PrefixCache(4096))
    batcher = Batcher(eng)
    long_ids = chat.prompt_ids([Message("user", "Tell me a long story about the sea, please.")])
    short_ids = chat.prompt_ids([Message("user", "Hi")])
    long_sp = SamplingParams(temperature=0, max_new_tokens=400)
    short_sp = SamplingParams(temperature=1.0, max_new_tokens=5, seed=11)
    long = batcher.submit(long_ids, long_sp)
    deadline = time.time() + 30
    while not batcher.batch.rows or not batcher.batch.rows[0].result.token_ids:  # the long one is decoding
        assert time.time() < deadline
        time.sleep(0.001)
    short = batcher.submit(short_ids, short_sp).result(timeout=60)
    assert not long.done()  # the short request did not wait for the long one
    long = long.result(timeout=120)
    assert len(short.token_ids) == 5 and len(long.token_ids) == 400
    alone = Batcher(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id))
    assert alone.submit(short_ids, short_sp).result(timeout=60).token_ids == short.token_ids
    assert alone.submit(long_ids, long_sp).result(timeout=120).token_ids == long.token_ids


def _decoding(batcher, rows: int) -> None:
    deadline = time.time() + 30
    while len(batcher.batch) < rows or not all(r.result.token_ids for r in batcher.batch.rows):
        assert time.time() < deadline
        time.sleep(0.001)


def test_arrivals_during_decoding_join_together_once_they_are_a_quarter_of_the_batch(lively_model, tokenizer, chat):
    from turnrl.engine import HFEngine, SamplingParams
    from turnrl.serve import Batcher

    batcher = Batcher(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id), wait_s=0.5, admit_after_steps=10**9)
    long_ids = chat.prompt_ids([Message("user", "Tell me a long story about the sea, please.")])
    longs = [batcher.submit(long_ids, SamplingParams(temperature=0, max_new_tokens=300)) for _ in range(8)]
    _decoding(batcher, 8)
    shapes = []
    hook = lively_model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    sp = SamplingParams(temperature=0, max_new_tokens=5)
    a = batcher.submit(chat.prompt_ids([Message("user", "Hi")]), sp)
    start = batcher.steps
    while batcher.steps < start + 20:  # 20 decode steps: one arrival is 1/8 of the batch, it waits
        time.sleep(0.001)
    assert not a.done() and len(batcher.pending) == 1
    b = batcher.submit(chat.prompt_ids([Message("user", "Hello")]), sp)  # 2 of 8: a quarter, both join
    assert len(a.result(timeout=60).token_ids) == 5 and len(b.result(timeout=60).token_ids) == 5
    assert not any(f.done() for f in longs)
    hook.remove()
    assert (9, 1) not in shapes and (10, 1) in shapes  # they joined in one admission, never one alone
    assert all(s == (8, 1) for s in shapes[:20])
    assert all(len(f.result(timeout=60).token_ids) == 300 for f in longs)


def test_a_lone_arrival_joins_after_admit_after_steps(lively_model, tokenizer, chat):
    from turnrl.engine import HFEngine, SamplingParams
    from turnrl.serve import Batcher

    batcher = Batcher(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id), wait_s=0.5, admit_after_steps=3)
    long_ids = chat.prompt_ids([Message("user", "Tell me a long story about the sea, please.")])
    longs = [batcher.submit(long_ids, SamplingParams(temperature=0, max_new_tokens=300)) for _ in range(8)]
    _decoding(batcher, 8)
    shapes = []
    hook = lively_model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    a = batcher.submit(chat.prompt_ids([Message("user", "Hi")]), SamplingParams(temperature=0, max_new_tokens=5))
    assert len(a.result(timeout=60).token_ids) == 5
    assert not any(f.done() for f in longs)  # it did not wait for the batch to finish
    hook.remove()
    first_prefill = next(i for i, s in enumerate(shapes) if s[1] > 1)
    assert first_prefill >= 2  # at least 3 steps after its arrival (the first may have begun before it)
    assert (9, 1) in shapes
    assert all(len(f.result(timeout=60).token_ids) == 300 for f in longs)


def test_a_seeded_request_gets_the_same_reply_alone_and_batched(lively_model, tokenizer, chat):
    from turnrl.engine import HFEngine, SamplingParams
    from turnrl.serve import Batcher

    batcher = Batcher(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id), wait_s=0.5)
    ids = [chat.prompt_ids([Message("user", f"Hi {i}")]) for i in range(8)]
    sp = SamplingParams(temperature=1.0, max_new_tokens=6, seed=42)
    alone = batcher.submit(ids[3], sp).result(timeout=60)
    futures = [batcher.submit(x, SamplingParams(temperature=1.0, max_new_tokens=6, seed=42 if i == 3 else i))
               for i, x in enumerate(ids)]
    assert futures[3].result(timeout=60).token_ids == alone.token_ids
