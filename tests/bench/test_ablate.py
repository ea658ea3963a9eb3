"""bench/ablate.py: every cell is a valid config, and the table averages cells over seeds."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ablate():
    spec = importlib.util.spec_from_file_location("ablate", ROOT / "bench" / "ablate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_cell_is_a_valid_config_with_equal_budgets_within_its_comparison():
    from turnrl.config import load_config

    ab = _ablate()
    cells = ab.cells()
    assert len(cells) == len({c["name"] for c in cells}) == 4 + 16 + 4 + 4
    budgets: dict[str, set] = {}
    for c in cells:
        args = list(c["args"])
        config = args.pop(0) if not args[0].startswith("--") else None
        cfg = load_config(config, args)
        budgets.setdefault(c["group"], set()).add(
            (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.train.steps))
    assert all(len(b) == 1 for b in budgets.values()), budgets  # same episodes per comparison


def test_the_table_averages_seeds(tmp_path, monkeypatch):
    ab = _ablate()
    monkeypatch.setattr(ab, "OUT", tmp_path / "ablation")
    monkeypatch.setattr(ab, "ROOT", tmp_path)
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "ablation").mkdir()
    for seed, succ in ((0, 0.25), (1, 0.75)):
        (tmp_path / "ablation" / f"a_ufo_multi_turn_s{seed}.json").write_text(json.dumps({
            "cell": f"a_ufo_multi_turn_s{seed}", "eval": {"5": {"succ@5": succ, "succ@1": 0.1}},
            "train": {"max_grad_norm": 1.0 + seed, "mean_reward": 0.5}}))
    data = ab.table()
    agg = data["mean_over_seeds"]["a_ufo_multi_turn"]
    assert agg["succ@5@eval5"] == pytest.approx(0.5) and agg["max_grad_norm"] == 2.0 and agg["seeds"] == 2
    assert data["cells_done"] == 2 and "a_ufo_single_turn_s0" in data["missing"]


def test_markdown_table_has_a_row_per_setting_and_eval_cap():
    ab = _ablate()
    data = {"mean_over_seeds": {"d_mini_o3_on": {"seeds": 2, "succ@1@eval3": 0.1, "succ@3@eval3": 0.2,
                                                  "succ@1@eval8": 0.1, "succ@8@eval8": 0.4,
                                                  "max_grad_norm": 1.5, "mean_train_reward": 0.25}}}
    lines = ab.markdown(data).splitlines()
    assert lines[2] == "| d_mini_o3_on | 2 | 3 | 0.100 | 0.200 | – | – | – | – | 1.50 | 0.250 |"
    assert lines[3].startswith("| d_mini_o3_on | 2 | 8 | 0.100 | 0.400 |") and len(lines) == 4
