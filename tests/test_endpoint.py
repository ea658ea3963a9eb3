"""The endpoint runner's concurrency limit, retries, timeouts and error accounting, against
real local HTTP servers that misbehave on purpose."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from turnrl.config import load_config
from turnrl.endpoint import ChatEndpoint, EndpointError
from turnrl.evaluate import evaluate


class Scripted(BaseHTTPRequestHandler):
    """Answers 'The answer is 7.' (or fails / stalls first, as the server is told)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append(body)
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            fail = srv.fail_first > 0
            srv.fail_first -= 1
        try:
            if fail:
                return self._json(503, {"error": {"message": "overloaded"}})
            time.sleep(srv.delay)
            self._json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "The answer is 7."}}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _json(self, code, doc):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout)
            pass


@pytest.fixture
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    srv.lock, srv.requests, srv.in_flight, srv.max_in_flight = threading.Lock(), [], 0, 0
    srv.fail_first, srv.delay = 0, 0.05
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


CFG = ["--task.digits", "1", "--eval.num_tasks", "6", "--eval.pass_k", "0", "--env.max_turns", "2"]


def test_concurrency_limit_and_usage_accounting(scripted):
    cfg = load_config(None, CFG)
    res = evaluate(ChatEndpoint(url(scripted), concurrency=2), cfg)
    assert scripted.max_in_flight == 2  # 6 episodes, never more than 2 requests at once
    assert all(r["model"] == "scripted" and r["temperature"] == 0 and r["max_tokens"] == 32 for r in scripted.requests)
    # 'The answer is 7.' is right only where the sum is 7; every episode repeats it on its second try
    n_requests = len(scripted.requests)
    assert res.metrics["tokens_per_episode"] == pytest.approx(5 * n_requests / 6)
    assert res.metrics["errored_episodes"] == 0 and res.metrics["episodes"] == 6


def test_failed_requests_are_retried_with_back_off(scripted):
    scripted.fail_first = 2
    ep = ChatEndpoint(url(scripted), "scripted", max_retries=2)
    t0 = time.time()
    res = evaluate(ep, load_config(None, CFG[:2] + ["--eval.num_tasks", "1", "--eval.pass_k", "0", "--env.max_turns", "1"]))
    assert len(scripted.requests) == 3 and res.metrics["errored_episodes"] == 0  # two 503s, then an answer
    assert time.time() - t0 >= 0.5  # the client waited between tries (openai: 0.5 s, then doubling)


def test_endpoint_failures_are_counted_apart_from_the_policy(scripted):
    scripted.delay = 3.0
    ep = ChatEndpoint(url(scripted), "scripted", timeout_s=0.5, max_retries=0)
    t0 = time.time()
    res = evaluate(ep, load_config(None, CFG))
    assert time.time() - t0 < 2.5  # 6 episodes, 8 at a time, each given up after 0.5 s
    assert res.metrics["errored_episodes"] == 6 and res.metrics["episodes"] == 0
    assert all("Timeout" in e["error"] for e in res.episodes)


def test_unreachable_endpoint_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1: cannot list models"):
        ChatEndpoint(f"http://127.0.0.1:{port}/v1", max_retries=0, timeout_s=2)


def test_each_episode_gets_its_own_room_in_the_context(scripted):
    from turnrl.engine.base import SamplingParams
    from turnrl.envs import RetryEnv, Task
    from turnrl.rollout import RolloutConfig

    ep = ChatEndpoint(url(scripted), "scripted")
    task = Task("t", "What is 2 + 3?", "5", "numeric", "last_number")
    cfg = RolloutConfig(SamplingParams(0.0, max_new_tokens=32), max_context=20)
    out = ep.episode(RetryEnv([task], max_turns=3), 0, cfg)
    # first turn: at most the whole context (20); the server then counts 10 prompt + 5 completion
    # tokens a turn, which leaves 20 - 15 = 5
    assert [r["max_tokens"] for r in scripted.requests] == [20, 5, 5]
    assert len(out.turns) == 3 and out.truncated_by == "max_turns"
    out = ep.episode(RetryEnv([task], max_turns=3), 0, RolloutConfig(SamplingParams(0.0, max_new_tokens=32), max_context=15))
    assert len(out.turns) == 1 and out.truncated and out.truncated_by == "context"


def test_the_endpoint_runner_stops_an_episode_at_the_envs_max_turns(scripted):
    from tests.test_rollout import NeverEnds
    from turnrl.engine.base import SamplingParams
    from turnrl.rollout import RolloutConfig

    out = ChatEndpoint(url(scripted), "scripted").episode(NeverEnds(), 0, RolloutConfig(SamplingParams(0.0)))
    assert len(out.turns) == 3 and len(scripted.requests) == 3  # before: it never stopped
    assert out.truncated and out.truncated_by == "max_turns"


def test_samples_of_one_task_send_different_seeds(scripted):
    from turnrl.engine.base import SamplingParams
    from turnrl.envs import RetryEnv, Task
    from turnrl.rollout import RolloutConfig

    task = Task("t", "What is 2 + 5?", "7", "numeric", "last_number")
    ChatEndpoint(url(scripted), "scripted").run(lambda: RetryEnv([task], max_turns=1), [0, 0, 0, 1],
                                                 RolloutConfig(SamplingParams(0.7, seed=3)), 4)
    seeds = [r["seed"] for r in scripted.requests]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**31 for s in seeds)  # before: 3000 for every request


def test_an_endpoint_refuses_a_rebuilt_context():
    from turnrl.config import ConfigError
    from turnrl.engine.base import SamplingParams
    from turnrl.rollout import RolloutConfig

    ep = ChatEndpoint("http://127.0.0.1:9/v1", model="m")  # never contacted: refused before any request
    with pytest.raises(ConfigError, match="rollout.context = 'markovian': an endpoint is sent the whole conversation"):
        ep.run(lambda: None, [0], RolloutConfig(SamplingParams(), context="markovian"), 1)
