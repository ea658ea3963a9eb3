"""Action tokens per second of the HF engine and the vLLM engine on one multi-turn workload.

Same model (SmolLM2-135M-Instruct; fp32, or both engines in bf16 with ``--dtype bf16``),
same episodes: the default UFO retry env (arithmetic, "try again" feedback), EPISODES
episodes of up to TURNS turns in one batch, once greedy and once sampled (temperature 0.7,
one seed per episode). A third run, ``sampled_t0.7_same_work``, gives both engines exactly
the same work: no stop ids (every turn runs to the token limit) and a task no reply solves
(every episode runs all turns), so the sampled speeds compare like for like. Each engine
runs in its own process (an in-process vLLM on CPU changes process-wide thread settings),
one after the other; the parent compares their
episodes: the share of turns with identical tokens (greedy) and the learner's audit of
the vLLM log-probs (mean / max |vLLM - learner|).
Writes bench/results/engines.json (``--dtype bf16``: engines_bf16.json), with the machine
it ran on; ``--dtype bf16`` on a machine without native bf16 kernels is refused.

Needs vLLM: on a CPU run it with ``.venv-vllm/bin/python bench/engines.py`` (scripts/setup_vllm.sh).
``--episodes 2 --turns 2 --max-new-tokens 8 --out /tmp/x.json`` checks the script in a minute.
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _model(dtype: str):
    """The default model in ``dtype`` ("bf16": what ``model.dtype = "bf16"`` samples and trains with)."""
    import torch

    from turnrl.models import load_model

    model = load_model("smollm2-135m").eval()
    return model.to(torch.bfloat16) if dtype == "bf16" else model


def run_one(engine: str, dtype: str, episodes: int, turns: int, max_new: int, vllm_kwargs: dict, out: Path) -> None:
    """Child process: build one engine, collect the two workloads, pickle what the parent needs."""
    import torch

    from turnrl.build import build_engine, env_factory
    from turnrl.config import load_config
    from rollout_throughput import Unsolvable  # bench/: arithmetic whose reference no reply matches
    from turnrl.engine.base import SamplingParams
    from turnrl.envs import RetryEnv
    from turnrl.logging import machine_record
    from turnrl.models import load_tokenizer
    from turnrl.rollout import RolloutConfig, collect

    tok = load_tokenizer("smollm2-135m")
    model = _model(dtype)  # a bf16 model gets a bf16 vLLM (build_engine)
    t0 = time.perf_counter()
    eng, chat = build_engine(model, tok, engine, vllm_kwargs if engine == "vllm" else None)
    build_s = time.perf_counter() - t0
    make = env_factory(load_config(None, []), "eval", max_turns=turns)
    seeds = list(range(episodes))
    result = {"engine": engine, "build_seconds": round(build_s, 2), "threads": torch.get_num_threads(),
              "machine": machine_record(model), "runs": {}}
    if engine == "vllm":
        result["dtype"] = eng.dtype
    sampled = SamplingParams(temperature=0.7, max_new_tokens=max_new, seed=0)
    for name, sp, same_work in (("greedy", SamplingParams(temperature=0, max_new_tokens=max_new), False),
                                ("sampled_t0.7", sampled, False), ("sampled_t0.7_same_work", sampled, True)):
        envs = [RetryEnv(Unsolvable(), max_turns=turns) if same_work else make() for _ in seeds]
        stops = eng.stop_ids
        if same_work:
            eng.stop_ids = type(stops)()  # no stop ids: every turn runs to max_new
        try:
            t0 = time.perf_counter()
            eps = collect(envs, seeds, seeds, eng, chat, RolloutConfig(sp, max_context=2048))
            dt = time.perf_counter() - t0
        finally:
            eng.stop_ids = stops
        n = sum(len(t.action_ids) for e in eps for t in e.turns)
        result["runs"][name] = {"seconds": round(dt, 2), "action_tokens": n, "turns": sum(len(e.turns) for e in eps),
                                "tokens_per_second": round(n / dt, 1), "episodes": eps}
    out.write_bytes(pickle.dumps(result))


def audit(eps, dtype: str) -> dict:
    """Learner (HF, in ``dtype``) log-probs of the episodes' sampled tokens vs the sampler's own."""
    import torch

    from turnrl.algos.logprobs import group_logprobs

    model = _model(dtype)
    diffs = []
    with torch.no_grad():
        for ep in eps:
            lp = group_logprobs(model, [ep])[0][0]
            s = torch.tensor([x for t in ep.live_turns for x in t.action_logprobs])
            if len(s) == len(lp) and len(s):
                diffs.append((lp - s).abs())
    d = torch.cat(diffs)
    return {"mean": float(d.mean()), "max": float(d.max()), "tokens": int(d.numel())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=32, help="episodes in the batch (default 32)")
    ap.add_argument("--turns", type=int, default=5, help="turn cap of an episode (default 5)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="token limit per turn (default 32)")
    ap.add_argument("--eager", action="store_true", help="vLLM without torch.compile (enforce_eager)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="both engines in this dtype")
    ap.add_argument("--out", default=None, help="default: bench/results/engines.json (engines_bf16.json for bf16)")
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "PICKLE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    vllm_kwargs = {"enforce_eager": True} if a.eager else {}
    a.out = a.out or str(ROOT / "bench" / "results" / ("engines.json" if a.dtype == "fp32" else "engines_bf16.json"))
    if a.child:
        run_one(a.child[0], a.dtype, a.episodes, a.turns, a.max_new_tokens, vllm_kwargs, Path(a.child[1]))
        return 0
    from turnrl.engine.vllm import vllm_missing
    from turnrl.learner import bf16_supported

    if a.dtype == "bf16" and not bf16_supported():
        print("bench/engines.py: --dtype bf16 on a machine without native bf16 kernels (a CPU without AVX-512): "
              "its figures would time emulated bf16; run it in fp32 here", file=sys.stderr)
        return 2
    if vllm_missing():
        print(vllm_missing(), file=sys.stderr)
        return 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("hf", "vllm"):
            pk = Path(tmp) / f"{engine}.pkl"
            cmd = [sys.executable, __file__, "--episodes", str(a.episodes), "--turns", str(a.turns),
                   "--max-new-tokens", str(a.max_new_tokens), "--dtype", a.dtype, *(["--eager"] if a.eager else []), "--child", engine, str(pk)]
            subprocess.run(cmd, check=True, cwd=ROOT)
            results[engine] = pickle.loads(pk.read_bytes())
    hf, vl = results["hf"], results["vllm"]
    g_hf, g_vl = hf["runs"]["greedy"]["episodes"], vl["runs"]["greedy"]["episodes"]
    same = sum(i < len(b.turns) and b.turns[i].action_ids == t.action_ids
               for x, b in zip(g_hf, g_vl) for i, t in enumerate(x.turns))
    total = sum(len(x.turns) for x in g_hf)
    out = {
        "model": "SmolLM2-135M-Instruct", "workload": f"{a.episodes} episodes x up to {a.turns} turns, default UFO retry env, "
        f"batch {a.episodes}, {a.max_new_tokens} new tokens per turn at most",
        "vllm_compile": not a.eager, "dtype": a.dtype, "machine": hf["machine"],
        "engines": {e: {k: v for k, v in r.items() if k != "runs"} | {
            "runs": {n: {k: v for k, v in run.items() if k != "episodes"} for n, run in r["runs"].items()}}
            for e, r in results.items()},
        "speedup_vllm_over_hf": {n: round(vl["runs"][n]["tokens_per_second"] / hf["runs"][n]["tokens_per_second"], 2)
                                 for n in hf["runs"]},
        "greedy_identical_turns": f"{same}/{total}", "greedy_identical_share": round(same / max(1, total), 4),
        "vllm_logprob_drift": {n: audit(vl["runs"][n]["episodes"], a.dtype) for n in vl["runs"]},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
