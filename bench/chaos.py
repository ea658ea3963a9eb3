"""Chaos run: kill -9 a training run at random moments, resume it, and check the weights.

A tiny random Llama (2 layers, SmolLM2's tokenizer) trains on the retry env with a
checkpoint after every step and an evaluation every second step. Each life of the run is
a `turnrl train --resume` process that reports the phase it is in (rollout, update,
checkpoint write, evaluation) in a file; the bench waits for a target phase, sleeps a
random moment and sends SIGKILL. When a run ends its final weights are compared, tensor by
tensor, with an uninterrupted run of the same config; then a fresh run starts, until
`--kills` kills are spent. Then two disk faults while a checkpoint is written: a full disk
(a tmpfs the size of one and a half checkpoints) and a read-only checkpoint directory; each
must end the run with one clear error line and leave the previous checkpoint loadable and
equal to the uninterrupted run's. Needs root (mount). Writes bench/results/chaos.json.

    python bench/chaos.py [--kills 20] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["rollout", "update", "checkpoint", "eval"]
STEPS = 6
CONFIG = f"""
[task]
multiple_choice = true
[env]
max_turns = 2
[rollout]
prompts_per_step = 2
group_size = 4
max_new_tokens = 8
[train]
steps = {STEPS}
lr = 1e-3
checkpoint_every = 1
keep_checkpoints = 2
threads = 1
[eval]
every = 2
num_tasks = 4
pass_k = 2
batch_size = 8
[log]
progress = false
"""


# -- the child: one life of the run, reporting its phase -------------------------------------
def child(config: str, out_dir: str, phase_file: str, extra: list[str]) -> int:
    import turnrl
    from turnrl import checkpoint, cli
    from turnrl.trainer import Trainer

    assert turnrl.__file__.startswith(os.environ["PYTHONPATH"]), turnrl.__file__  # the frozen copy

    log = open(phase_file + ".log", "a")

    def mark(name: str) -> None:  # the log first: it is the record of the phase at a kill
        log.write(f"{time.monotonic()} {name}\n")
        log.flush()
        with open(phase_file, "w") as f:
            f.write(name)

    def wrap(owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def wrapped(*a, **k):
            mark(name)
            try:
                return inner(*a, **k)
            finally:
                mark("between")
        setattr(owner, attr, wrapped)

    wrap(Trainer, "collect", "rollout")
    wrap(Trainer, "update", "update")
    wrap(checkpoint, "save", "checkpoint")
    wrap(Trainer, "run_eval", "eval")
    wrap(Trainer, "save_final", "final")
    mark("start")
    return cli.main(["train", config, "--resume", "--train.out_dir", out_dir, *extra])


SOURCE: Path | None = None  # a frozen copy of turnrl/: every life of every run uses the same code


def _spawn(config: Path, out_dir: Path, phase_file: Path, extra: list[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", str(config), str(out_dir), str(phase_file), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                 "PYTHONPATH": str(SOURCE)})


def _phase(phase_file: Path) -> str:
    try:
        return phase_file.read_text() or "?"
    except FileNotFoundError:
        return "?"


def _last_phase(phase_file: Path) -> str:
    """The phase a killed child was in: the last line of its append-only phase log."""
    lines = Path(f"{phase_file}.log").read_text().splitlines()
    return lines[-1].split()[1] if lines else "start"


# -- the parent ------------------------------------------------------------------------------
def make_model(d: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from turnrl.models import load_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    load_tokenizer("smollm2-135m").save_pretrained(d)


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def same_checkpoint(a: Path, b: Path) -> bool:
    import torch

    x, y = (torch.load(p / "state.pt", weights_only=False) for p in (a, b))
    return x["step"] == y["step"] and all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])


def run_to_end(config: Path, out_dir: Path, phase_file: Path, extra: list[str] = ()) -> tuple[int, str]:
    p = _spawn(config, out_dir, phase_file, list(extra))
    _, err = p.communicate()
    return p.returncode, err


def phase_seconds(log: Path) -> dict[str, float]:
    """Mean duration of each phase in a run's phase log (a phase ends at the next mark)."""
    rows = [line.split() for line in log.read_text().splitlines()]
    spans: dict[str, list[float]] = {}
    for (t0, name), (t1, _) in zip(rows, rows[1:]):
        spans.setdefault(name, []).append(float(t1) - float(t0))
    return {k: sum(v) / len(v) for k, v in spans.items() if k in PHASES}


def chaos(work: Path, config: Path, ref: Path, kills: int, rng: random.Random, durations: dict) -> dict:
    phase_file = work / "phase"
    events, rounds, run, lives = [], [], 0, 0
    out = work / f"run{run}"
    while len(events) < kills:
        target = PHASES[len(events) % len(PHASES)]
        phase_file.write_text("")
        p = _spawn(config, out, phase_file)
        lives += 1
        while p.poll() is None and _phase(phase_file) != target:
            time.sleep(0.001)
        if p.poll() is None:
            time.sleep(rng.uniform(0, durations[target]))  # a random moment of the phase
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            ckpts = sorted(x.name for x in (out / "checkpoints").glob("*")) if (out / "checkpoints").is_dir() else []
            events.append({"kill": len(events) + 1, "run": run, "target": target, "phase_at_kill": _last_phase(phase_file),
                           "checkpoint_dir_after": ckpts})
            continue
        p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"run {run} failed (rc {p.returncode}): {p.stderr}")
        rounds.append({"run": run, "identical_to_uninterrupted": same_weights(out, ref)})
        run += 1
        out = work / f"run{run}"
    rc, err = run_to_end(config, out, phase_file)  # the last run, to its end without kills
    if rc != 0:
        raise SystemExit(f"run {run} failed on its last resume (rc {rc}): {err}")
    lives += 1
    rounds.append({"run": run, "identical_to_uninterrupted": same_weights(out, ref)})
    return {"kills": events, "runs": rounds, "process_lives": lives,
            "phases_hit": dict(Counter(e["phase_at_kill"] for e in events)),
            "all_identical": all(r["identical_to_uninterrupted"] for r in rounds)}


def _mount(d: Path, size: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)


def disk_faults(work: Path, config: Path, ref: Path) -> dict:
    """Each run's checkpoints/ is its own tmpfs: full after one checkpoint, or read-only."""
    out: dict = {}
    ckpt_bytes = (ref / "checkpoints" / "step_000001" / "state.pt").stat().st_size
    for fault in ("full_disk", "read_only"):
        run = work / fault
        ck = run / "checkpoints"
        _mount(ck, f"{int(ckpt_bytes * 1.5) // 4096 * 4096}" if fault == "full_disk" else "256m")
        try:
            if fault == "read_only":  # one step, then the directory turns read-only
                rc, err = run_to_end(config, run, work / "phase", ["--train.steps", "1"])
                assert rc == 0, err
                subprocess.run(["mount", "-o", "remount,ro", str(ck)], check=True)
            rc, err = run_to_end(config, run, work / "phase", ["--train.steps", "2"])
            lines = [line for line in err.splitlines() if line.strip()]
            left = sorted(p.name for p in ck.iterdir())
            out[fault] = {
                "tmpfs_bytes": int(ckpt_bytes * 1.5) // 4096 * 4096 if fault == "full_disk" else 256 << 20,
                "exit_code": rc, "error_lines": sum(line.startswith("error:") for line in lines),
                "traceback": any("Traceback" in line for line in lines),
                "error": lines[-1] if lines else "", "stderr": lines[-4:],
                "checkpoint_dir_after": left,
                "previous_checkpoint_intact": left == ["step_000001"] and same_checkpoint(ck / "step_000001", ref / "checkpoints" / "step_000001"),
            }
        finally:
            subprocess.run(["umount", "-l", str(ck)], check=False)
    out["ok"] = all(v["exit_code"] == 1 and v["error_lines"] == 1 and not v["traceback"]
                    and v["error"].startswith("error: checkpoint ") and v["previous_checkpoint_intact"]
                    for v in out.values())
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2], argv[3], argv[4:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/chaos.py mounts tmpfs file systems: run it as root")
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="turnrl-chaos-"))
    global SOURCE
    SOURCE = work / "src"
    shutil.copytree(ROOT / "turnrl", SOURCE / "turnrl", ignore=shutil.ignore_patterns("__pycache__"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    try:
        make_model(work / "model")
        config = work / "chaos.toml"
        config.write_text(f'[model]\nname = "{work / "model"}"\n' + CONFIG)
        ref = work / "reference"
        t_ref = time.time()
        rc, err = run_to_end(config, ref, work / "ref_phase", ["--train.keep_checkpoints", str(STEPS)])
        if rc != 0:
            raise SystemExit(f"the uninterrupted run failed: {err}")
        ref_seconds = time.time() - t_ref
        durations = phase_seconds(work / "ref_phase.log")
        kills = chaos(work, config, ref, args.kills, random.Random(args.seed), durations)
        faults = disk_faults(work, config, ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "source": commit,
        "setup": {"model": "random 2-layer Llama, hidden 32, SmolLM2 tokenizer", "steps": STEPS,
                  "checkpoint_every": 1, "eval_every": 2, "seed": args.seed},
        "uninterrupted_run_seconds": round(ref_seconds, 1),
        "mean_phase_seconds": {k: round(v, 4) for k, v in durations.items()},
        "kill9": kills, "disk_faults": faults,
        "ok": kills["all_identical"] and faults["ok"],
        "wall_seconds": round(time.time() - t0, 1),
    }
    path = ROOT / "bench" / "results" / "chaos.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("ok", "wall_seconds", "uninterrupted_run_seconds")}
    print(json.dumps({**summary, "phases_hit": kills["phases_hit"], "runs": kills["runs"],
                      "disk_faults": {k: v for k, v in faults.items()}}, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
