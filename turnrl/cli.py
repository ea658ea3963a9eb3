"""``turnrl`` command line: train, eval, serve, report, rollout, envs, check-env."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import time
from pathlib import Path

from turnrl.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnrl", description="Multi-turn RL for language models: train with GRPO on "
                                "multi-turn envs, evaluate turn by turn, serve, report.",
                                epilog="'turnrl COMMAND --help' describes a command. Every config field: docs/config.md.")
    p.add_argument("--version", action="version", version=f"turnrl {_version()}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", title="commands")
    for name, help_ in (("train", "train a policy (GRPO family) on an env"),
                        ("eval", "evaluate a model on the held-out split"),
                        ("rollout", "print a few episodes: turns, rewards, trained tokens")):
        s = sub.add_parser(name, help=help_, description=help_ + ". Any config field can be overridden "
                           "with --section.key value (e.g. --train.lr 1e-5).")
        s.add_argument("config", nargs="?", help="TOML config file (defaults if omitted)")
        s.add_argument("--model", dest="model_name", help="shortcut for --model.name: 'smollm2-135m', a local HF dir, or a hub id")
        if name == "train":
            s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
        if name == "rollout":
            s.add_argument("-n", type=_int_in(1), default=2, help="episodes to print")
        if name == "eval":
            s.add_argument("--endpoint", help="evaluate an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1")
            s.add_argument("--endpoint-model", help="model name on the endpoint (default: the first it lists)")
            s.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
            s.add_argument("--concurrency", type=_int_in(1), default=8, help="endpoint: requests in flight at once")
            s.add_argument("--timeout", type=float, default=120.0, help="endpoint: seconds per request")
            s.add_argument("--max-retries", type=_int_in(0), default=3, help="endpoint: retries per request, with exponential back-off")
            s.add_argument("--out", help="results directory (default: runs/eval/<model>-<time>)")
            s.add_argument("--compare", nargs="+", metavar="SPEC",
                           help="evaluate several models on the same seeds and write one table; a SPEC is a results or "
                                "run directory (reused as stored), an http(s):// endpoint (URL#model to name the model), "
                                "or a model name / directory")
            s.add_argument("--no-report", action="store_true", help="skip the Markdown / PNG / HTML report")
        s.add_argument("--engine", choices=["hf", "vllm"], help="sampler: shortcut for --scale.engine ('vllm': see the "
                       "README; on a CPU run from .venv-vllm made by scripts/setup_vllm.sh)")
    v = sub.add_parser("serve", help="serve a model over an OpenAI-compatible chat-completions API",
                       description="Serve a model at http://HOST:PORT/v1 (/chat/completions, /models; no streaming) "
                       "with the built-in engine. Requests join the running batch at the next decode step and leave "
                       "it when done; a prefix cache keeps finished requests' KV so a conversation's next turn encodes "
                       "only its new tokens. Greedy replies equal the in-process engine's. Stop it with Ctrl-C.")
    v.add_argument("model", help="'smollm2-135m', a local HF dir, a run dir (its final/ model), a checkpoint dir, or a hub id")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    v.add_argument("--port", type=_int_in(0, 65535), default=8000, help="port to listen on, 0-65535 (0: any free "
                   "one) (default: %(default)s)")
    v.add_argument("--name", help="model name clients ask for (default: MODEL as given)")
    v.add_argument("--max-context", type=_int_in(2), default=2048, help="prompt + reply token limit (default: %(default)s)")
    v.add_argument("--max-batch", type=_int_in(1), default=32, help="requests decoding together at most (default: "
                   "%(default)s)")
    v.add_argument("--prefix-cache-tokens", type=int, default=32768,
                   help="tokens of finished requests' KV kept for later requests that share their prefix, least "
                        "recently used out; 0 = off. A token costs layers x 2 x kv_heads x head_dim x 4 bytes "
                        "(SmolLM2-135M: 45 KiB; the default: 1.4 GiB) (default: %(default)s)")
    v.add_argument("--threads", type=_int_in(0), default=0, help="torch CPU threads; 0 = torch's default")
    v.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="sampler: the built-in 'hf' engine (default) "
                   "or 'vllm' (see the README; on a CPU run from .venv-vllm made by scripts/setup_vllm.sh)")
    r = sub.add_parser("report", help="build the JSON / Markdown / PNG / HTML report of a run or eval directory",
                       description="Build report.json, report.md, succ_at_k.png, training.png (runs only) and a "
                       "self-contained report.html with every episode, from a run directory (its evals/step_*/ and "
                       "metrics.jsonl) or an eval results directory (eval.json + episodes.jsonl).")
    r.add_argument("run_dir", help="a training run directory or an eval results directory")
    r.add_argument("--out", help="where to write it (default: RUN_DIR/report)")
    sub.add_parser("envs", help="list registered envs",
                   description="List the registered envs with their descriptions; '(tasks)' marks envs that take "
                   "the [task] section. Use one with --env.name NAME.")
    sub.add_parser("algos", help="list the algorithms (credit assignment) and the [algo] fields each reads",
                   description="List the registered algorithms: name, paper, what it credits, the [algo] fields it "
                   "reads beyond the common ones, and what it needs from the env. Use one with --algo.name NAME.")
    c = sub.add_parser("check-env", help="validate an env (registered name or module.path:Class)",
                       description="Run check_env on an env: types, finite rewards, episode ends, garbage actions "
                       "and determinism per seed. Prints 'NAME: ok' (exit 0) or 'NAME: FAILED: why' (exit 1). "
                       "A module.path:Class env must be importable: put its directory on PYTHONPATH (the turnrl "
                       "command does not look in the current directory).")
    c.add_argument("env", help="env name or module.path:Class")
    c.add_argument("config", nargs="?", help="TOML config whose [task]/[env] sections configure it")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("turnrl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _int_in(low: int, high: int | None = None):
    """An argparse type: an int from ``low`` to ``high`` (argparse names the option when it fails)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in {low}-{high}" if high is not None else f"must be >= {low}, got {value}")
        return value
    return parse


def _overrides(rest: list[str], key: str) -> bool:
    """Whether the command line's overrides set ``key`` (``--section.field``)."""
    return any(a == key or a.startswith(key + "=") for a in rest)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``--section.key value`` (or ``--section.key=value``) pairs from the rest,
    so an override's value is never taken for a positional argument."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "." in a.split("=", 1)[0]:
            take = 1 if "=" in a else 2
            overrides += argv[i:i + take]
            i += take
        else:
            rest.append(a)
            i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plain, overrides = split_overrides(argv)
    parser = _parser()
    if not argv:
        parser.print_help()
        return 0
    args, unknown = parser.parse_known_args(plain)
    if args.cmd is None:  # options only, e.g. a lone override
        parser.error("a command is required")
    rest = unknown + overrides
    try:
        return _dispatch(args, rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # DataError, ModelLoadError, EnvCheckError, ...
        print(f"error: {e}", file=sys.stderr)
        return 1


def _envs(args, rest: list[str]) -> int:
    from turnrl.envs import registered

    _no_overrides("envs", rest)
    for name, factory in sorted(registered().items()):
        print(describe_env(name, factory))
    return 0


def _algos(args, rest: list[str]) -> int:
    from turnrl.algos import ALGORITHMS
    from turnrl.algos.base import COMMON_FIELDS

    _no_overrides("algos", rest)
    print(f"common [algo] fields: {', '.join(sorted(COMMON_FIELDS - {'name'}))}")
    for name, a in ALGORITHMS.items():
        paper = f" (arXiv {a.paper})" if a.paper else ""
        print(f"{name}{paper}: {a.summary}")
        print(f"    reads: {', '.join(sorted(a.reads)) or '-'}; needs: {', '.join(sorted(a.needs)) or '-'}; "
              f"default masks: {', '.join(a.default_masks) or '-'}")
    return 0


def _check_env(args, rest: list[str]) -> int:
    import warnings

    from turnrl.build import env_factory, has_split
    from turnrl.envs import EnvCheckError, check_env, check_split

    if _overrides(rest, "--env.name"):
        raise ConfigError(f"check-env {args.env}: the env is named once, as the command's argument; drop --env.name")
    cfg = load_config(args.config, ["--env.name", args.env, *rest])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notes are printed below
            notes = check_env(env_factory(cfg, "train")())
        if has_split(cfg):
            notes.append(check_split(env_factory(cfg, "train"), env_factory(cfg, "eval")))
        else:
            notes.append("the env class takes no 'split': its eval seeds start at 10**9, its instances may repeat")
    except EnvCheckError as e:
        print(f"{args.env}: FAILED: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"{args.env}: note: {note}")
    print(f"{args.env}: ok")
    return 0


def _serve(args, rest: list[str]) -> int:
    _no_overrides("serve", rest)
    if args.prefix_cache_tokens < 0:
        raise ConfigError(f"--prefix-cache-tokens {args.prefix_cache_tokens}: must be >= 0 (0 = off)")
    from turnrl.serve import serve

    serve(args.model, host=args.host, port=args.port, name=args.name, max_context=args.max_context,
          max_batch=args.max_batch, threads=args.threads, prefix_cache_tokens=args.prefix_cache_tokens,
          engine=args.engine)
    return 0


def _report(args, rest: list[str]) -> int:
    from turnrl.report import build_report

    _no_overrides("report", rest)
    print(build_report(args.run_dir, args.out))
    return 0


def _train(args, cfg) -> int:
    from turnrl.trainer import Trainer

    summary = Trainer(cfg).train(resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def _rollout(args, cfg) -> int:
    from turnrl.build import build_engine, build_policy, env_factory, for_sampling
    from turnrl.rollout import RolloutConfig, collect

    make = env_factory(cfg, "train")  # bad data fails before the model loads
    model, tok = build_policy(cfg)
    engine, chat = build_engine(for_sampling(model, cfg, "sampling"), tok, cfg.scale.engine, cfg.scale.vllm_kwargs)
    eps = collect([make() for _ in range(args.n)], list(range(args.n)), list(range(args.n)), engine, chat,
                  RolloutConfig.from_section(cfg.rollout, cfg.train.seed))
    for ep in eps:
        print(format_episode(ep, tok))
    return 0


def _no_overrides(cmd: str, rest: list[str]) -> None:
    if rest:
        raise ConfigError(f"turnrl {cmd} takes no config overrides: {' '.join(rest)}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[-60:] or "model"


def _runner(spec: str, cfg, args):
    """A runner for one model spec: an http(s) endpoint or a model for the built-in engine."""
    if spec.startswith(("http://", "https://")):
        from turnrl.endpoint import ChatEndpoint

        url, _, name = spec.partition("#")
        return ChatEndpoint(url, name or args.endpoint_model, api_key=os.environ.get(args.api_key_env),
                            concurrency=args.concurrency, timeout_s=args.timeout, max_retries=args.max_retries)
    from turnrl.build import build_engine, for_sampling, load_for_inference
    from turnrl.evaluate import EngineRunner

    model, tok = load_for_inference(spec)
    engine, chat = build_engine(for_sampling(model, cfg, "evaluating"), tok, cfg.scale.engine, cfg.scale.vllm_kwargs)
    return EngineRunner(engine, chat, name=spec)


def held_out_line(meta: dict) -> str:
    """What the held-out set was: episodes, distinct instances, how Pass@k was drawn."""
    size = meta.get("split_instances")
    line = (f"held-out: {len(meta['seeds'])} episodes on {meta.get('distinct_instances')} distinct instances"
            f"{f' (of {size} in the eval split)' if size else ''}, {meta.get('held_out')}")
    if meta.get("pass_k"):
        line += f"; Pass@{meta['pass_k']} from {meta.get('pass_n')} samples per task"
    return line


def _eval(args, cfg) -> int:
    from turnrl.build import env_factory
    from turnrl.evaluate import evaluate
    from turnrl.results import EVAL_FILE, check_out_dir, find_evals, holds_training_run, load_eval

    if args.endpoint and (args.compare or args.model_name):
        raise ConfigError("--endpoint names the model to evaluate (it replaces [model]); drop --model / --compare "
                          "(or list the endpoint among --compare's specs)")
    env_factory(cfg, "eval")  # bad data fails before any model loads
    specs = args.compare or [args.endpoint or cfg.model.name]
    out = Path(args.out or Path("runs") / "eval" / f"{_slug(specs[0] if len(specs) == 1 else 'compare')}-{time.strftime('%Y%m%d-%H%M%S')}")
    if holds_training_run(out):
        raise ConfigError(f"--out {out} holds a training run; its evaluations are in {out / 'evals'}: choose another --out")
    check_out_dir(out, "--out")  # before the evaluation: its results must have somewhere to go
    results = []
    for i, spec in enumerate(specs):
        p = Path(spec)
        if args.compare and p.is_dir() and ((p / EVAL_FILE).is_file() or (p / "evals").is_dir()):
            d = find_evals(p)[-1]  # a results dir, or a run's last evaluation
            results.append((spec, load_eval(d)))
            continue
        result = evaluate(_runner(spec, cfg, args), cfg)
        result.save(out / f"{i}-{_slug(spec)}" if args.compare else out)
        results.append((spec, result))
        print(held_out_line(result.meta), file=sys.stderr)
        err = int(result.metrics.get("errored_episodes", 0))
        if err:
            print(f"warning: {err} episodes of {spec} failed at the endpoint and were left out of its metrics", file=sys.stderr)
    if args.compare:
        from turnrl.report import compare

        md = compare(results, out)
        print(md.read_text())
    else:
        print(json.dumps(results[0][1].metrics, indent=2))
        if not args.no_report:
            from turnrl.report import build_report

            print(f"report: {build_report(out)}", file=sys.stderr)
    print(f"results: {out}", file=sys.stderr)
    return 1 if any(r.metrics.get("errored_episodes") for _, r in results) else 0


def describe_env(name: str, factory) -> str:
    """``name  first paragraph of the docstring``, whole, wrapped under a hanging indent."""
    import textwrap

    doc = inspect.cleandoc(factory.__doc__ or "") or factory.__qualname__
    text = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
    if getattr(factory, "uses_tasks", False):
        text += " (tasks)"
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    return textwrap.fill(text, width, initial_indent=f"{name:18s}", subsequent_indent=" " * 18)


def format_episode(ep, tok) -> str:
    """Turns with rewards; trained tokens shown in [[...]], context in plain text."""
    lines = [f"=== episode task={ep.task_id} terminated={ep.terminated} truncated={ep.truncated} "
             f"return={ep.total_reward:+.2f}"]
    for i, t in enumerate(ep.turns, 1):
        ctx = tok.decode(t.obs_ids)
        act = tok.decode(t.action_ids)
        flags = [f for f, on in (("void", t.void), ("cut", t.cut_by_length), ("frozen", t.frozen)) if on]
        lines.append(f"--- turn {i}  reward={t.reward:+.2f}  answer={t.info.get('answer')!r} "
                     f"correct={t.info.get('correct')} {' '.join(flags)}")
        lines.append(f"{ctx}[[{act}]]")
    return "\n".join(lines)


#: commands that read no run config (check-env builds its own), and those that run one
_WITHOUT_CONFIG = {"envs": _envs, "algos": _algos, "check-env": _check_env, "serve": _serve, "report": _report}
_WITH_CONFIG = {"eval": _eval, "train": _train, "rollout": _rollout}


def _dispatch(args, rest: list[str]) -> int:
    if args.cmd in _WITHOUT_CONFIG:
        return _WITHOUT_CONFIG[args.cmd](args, rest)
    for flag, key, value in (("--model", "--model.name", getattr(args, "model_name", None)),
                             ("--engine", "--scale.engine", getattr(args, "engine", None))):
        if value:
            if _overrides(rest, key):
                raise ConfigError(f"{flag} is a shortcut for {key}: give one of them")
            rest = [*rest, key, value]
    return _WITH_CONFIG[args.cmd](args, load_config(args.config, rest))


if __name__ == "__main__":
    raise SystemExit(main())
