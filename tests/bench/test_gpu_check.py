"""bench/gpu_check.py in its CPU smoke mode (the real run needs a CUDA device)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_cpu_run_writes_a_summary_with_positive_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = _gpu_check().main(["--device", "cpu", "--tiny", "--out", str(out), "--peak-tflops", "1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for k in ("device", "device_name", "torch", "transformers", "dtype", "wall_s"):
        assert res[k]
    assert res["device"] == "cpu" and res["dtype"] == "float32"
    ro, le, tr = res["rollout"], res["learner"], res["train"]
    assert ro["turns_played"] == 3 and ro["tokens_sampled"] > 0
    assert ro["tokens_per_s"] > 0 and le["tokens_per_s"] > 0 and le["seconds_per_step"] > 0
    assert 0 < ro["mfu"] < 1 and 0 < le["mfu"] < 1
    assert len(tr["losses"]) == 3 and all(isinstance(x, float) for x in tr["losses"])
    assert all(g > 0 for g in tr["grad_norms"]) and not tr["truncated_by_budget"]
    # the engine sampled with the weights the learner scored first: same log-probs (fp32)
    assert tr["audit_mean_abs_logprob_diff"] < 1e-4


def test_grpo_settings_are_the_config_defaults():
    from turnrl.config import AlgoConfig

    cfg = AlgoConfig(name="grpo")
    for k, v in vars(_gpu_check().GRPO).items():
        assert getattr(cfg, k) == v, k


def test_no_cuda_device_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        _gpu_check().main(["--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_micro_groups_change_the_batching_not_the_step(tmp_path):
    # 4 groups of 8, one forward each or all 4 in one: the same losses (fp32 rounding aside)
    runs = [_gpu_check().main(["--device", "cpu", "--tiny", "--batch", "32", "--micro-groups", m, "--out",
                               str(tmp_path / f"{m}.json"), "--peak-tflops", "1"]) for m in ("1", "4")]
    assert runs[1]["workload"]["micro_groups"] == 4
    for a, b in zip(*(r["train"]["losses"] for r in runs)):
        assert abs(a - b) < 1e-7
    assert runs[0]["train"]["losses"][2] < -1e-4  # the steps moved the policy: the check is not vacuous


def test_profile_writes_both_tables(tmp_path):
    prof = tmp_path / "prof.txt"
    _gpu_check().main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "x.json"), "--profile", str(prof)])
    text = prof.read_text()
    assert "== one turn (generate)" in text and "== one training step" in text and "aten::mm" in text
