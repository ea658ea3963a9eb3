"""Run logging: JSONL always, a rich progress bar on the console, TensorBoard optional."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path



def machine_record(model) -> dict:
    """Where and in what a run computes: the policy's dtype as held (``model.dtype = "bf16"``
    falls back to fp32 on a machine without native bf16 kernels), the device, the CPU and
    the kernels torch picked for it, the thread count and torch's version. A run's figures
    depend on all of these."""
    import platform

    import torch

    from turnrl.learner import bf16_supported

    param = next(model.parameters())
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"policy_dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device),
            "gpu": torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else None,
            "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_supported(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


class RunLogger:
    def __init__(self, run_dir: Path, cfg, truncate_after: int | None = None):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        if truncate_after is not None and self.path.exists():
            # resuming: drop rows logged after the checkpoint, they will be produced again
            rows = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= truncate_after]
            self.path.write_text("".join(r + "\n" for r in rows))
        elif truncate_after is None and self.path.exists():
            self.path.unlink()
        (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        self.f = self.path.open("a")
        self.show_progress = cfg.log.progress
        self.tb = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the 'tensorboard' extra

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def machine(self, step: int, model) -> None:
        """``machine.json``: one :func:`machine_record` per start of the run, ``from_step`` the
        step it starts at (a resumed run may continue elsewhere); records of steps not yet
        reached again are dropped, as ``metrics.jsonl``'s rows are."""
        path = self.run_dir / "machine.json"
        runs = json.loads(path.read_text()) if step > 0 and path.exists() else []
        runs = [r for r in runs if r["from_step"] < step] + [{"from_step": step, **machine_record(model)}]
        path.write_text(json.dumps(runs, indent=2) + "\n")

    def log(self, split: str, step: int, metrics: dict) -> None:
        self.f.write(json.dumps({"split": split, "step": step, **metrics}) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)

    def progress(self, total: int, start: int) -> "Progress":
        return Progress(total, start, self.show_progress)

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def update_note(row: dict) -> str:
    """``loss ...`` for a step that updated the policy; otherwise why no update was taken."""
    if row.get("update_skipped"):
        why = [f"{k.removeprefix('masked_')} {int(v)}" for k, v in row.items()
               if k.startswith("masked_") and not k.startswith("masked_turns_") and v]
        return "no update: every episode masked" + (f" ({', '.join(why)})" if why else "")
    if row.get("nan_skipped"):
        return "no update: non-finite loss or gradient"
    return f"loss {row.get('loss', 0):+.3f}"


class Progress:
    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled and total > start:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"))
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def advance(self, row: dict) -> None:
        if self.bar is not None:
            info = f"reward {row.get('reward', 0):+.2f} succ@1 {row.get('succ@1', 0):.2f} " + update_note(row)
            self.bar.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    @contextmanager
    def paused(self):
        """Hide the bar while something else (an evaluation's own bar) uses the console."""
        if self.bar is None:
            yield
            return
        self.bar.stop()
        try:
            yield
        finally:
            self.bar.start()


class EvalProgress:
    """The console during an evaluation: one line per phase (multi-turn episodes, Pass@k
    samples, the collapse diagnostic) with a count and time, so minutes of evaluation are
    not silent. Off with ``log.progress = false``; ``advance`` is thread-safe."""

    def __init__(self, enabled: bool, step: int | None = None):
        self.enabled, self.step = enabled, step
        self.bar = self.task = None

    def __enter__(self) -> "EvalProgress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn)

            self.bar = RichProgress(TextColumn("eval" + (f" @ step {self.step}" if self.step is not None else "")),
                                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), transient=True)
            self.bar.start()
        return self

    def start(self, phase: str, total: int | None) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.update(self.task, visible=False)
            self.task = self.bar.add_task(phase, total=total)

    def advance(self, n: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
