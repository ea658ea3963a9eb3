"""bench/rollout_throughput.py's matmul floor (the timed runs themselves are the script's)."""
import importlib.util
import sys
from pathlib import Path

from tests.conftest import make_tiny_model

def _load(name: str):
    """A bench script as a module (bench/ is on the path when the scripts run)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "bench" / f"{name}.py")
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_load("cpu_costs")
rt = _load("rollout_throughput")


def test_matmul_floor_adds_the_engines_forwards_and_an_ideal_schedule(monkeypatch):
    calls = []
    cost = lambda model, rows, repeats, head_rows: calls.append((rows, head_rows)) or rows + 1000 * head_rows
    monkeypatch.setattr(rt, "matmul_seconds", cost)
    # a prefill of 4 rows x 30 tokens (100 real), then decode steps of 4, 3 and 2 rows: 9 action tokens
    forwards = [(4, 30, 100), (4, 1, 4), (3, 1, 3), (2, 1, 2)]
    floor = rt.matmul_floor(None, forwards, action_tokens=9, batch=4)
    # schedule: (120 + 4000) + (4 + 4000) + (3 + 3000) + (2 + 2000) = 13,129
    # ideal: ceil(9 / 4) = 3 full steps of 4004, and the prefill's 100 real rows with 4 head rows: 4,100
    assert floor == {"forwards": 4, "decode_steps": 3, "mean_rows_per_decode_step": 3.0,
                     "matmul_seconds_engine_schedule": 13129, "matmul_seconds_full_decode_batches": 16112}
    assert len(calls) == len(set(calls)) == 5  # each shape measured once: (4, 4) serves both schedules


def test_matmul_seconds_times_the_linear_layers_and_the_head():
    assert 0 < rt.matmul_seconds(make_tiny_model(), 8, repeats=1, head_rows=2) < 1
