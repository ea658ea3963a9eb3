"""``turnrl`` command line: train, eval, rollout, envs, check-env."""
from __future__ import annotations

import argparse
import json
import sys

from turnrl.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnrl", description="Multi-turn RL for language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
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
            s.add_argument("-n", type=int, default=2, help="episodes to print")
    sub.add_parser("envs", help="list registered envs")
    c = sub.add_parser("check-env", help="validate an env (registered name or module.path:Class)")
    c.add_argument("env", help="env name or module.path:Class")
    c.add_argument("config", nargs="?", help="TOML config whose [task]/[env] sections configure it")
    return p


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
    args, unknown = _parser().parse_known_args(plain)
    rest = unknown + overrides
    try:
        return _dispatch(args, rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # DataError, ModelLoadError, EnvCheckError, ...
        print(f"error: {e}", file=sys.stderr)
        return 1


def _dispatch(args, rest: list[str]) -> int:
    if args.cmd == "envs":
        from turnrl.envs import registered

        for name, factory in sorted(registered().items()):
            doc = (factory.__doc__ or "").strip().splitlines()
            print(f"{name:12s} {factory.__module__}.{factory.__qualname__}  {doc[0] if doc else ''}")
        return 0
    if args.cmd == "check-env":
        from turnrl.build import env_factory
        from turnrl.envs import EnvCheckError, check_env

        cfg = load_config(args.config, ["--env.name", args.env, *rest])
        try:
            check_env(env_factory(cfg, "train")())
        except EnvCheckError as e:
            print(f"{args.env}: FAILED: {e}", file=sys.stderr)
            return 1
        print(f"{args.env}: ok")
        return 0
    if getattr(args, "model_name", None):
        rest = [*rest, "--model.name", args.model_name]
    cfg = load_config(args.config, rest)
    if args.cmd == "train":
        from turnrl.trainer import Trainer

        summary = Trainer(cfg).train(resume=args.resume)
        print(json.dumps(summary, indent=2))
        return 0
    from turnrl.build import build_engine, build_policy, env_factory

    make = env_factory(cfg, "train" if args.cmd == "rollout" else "eval")  # bad data fails before the model loads
    model, tok = build_policy(cfg)
    engine, chat = build_engine(model, tok)
    if args.cmd == "eval":
        from turnrl.evaluate import evaluate

        metrics, _ = evaluate(engine, chat, cfg)
        print(json.dumps(metrics, indent=2))
        return 0
    if args.cmd == "rollout":
        from turnrl.rollout import RolloutConfig, collect
        from turnrl.engine.base import SamplingParams

        r = cfg.rollout
        eps = collect([make() for _ in range(args.n)], list(range(args.n)), list(range(args.n)), engine, chat,
                      RolloutConfig(SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens, cfg.train.seed), r.max_context))
        for ep in eps:
            print(format_episode(ep, tok))
        return 0
    raise AssertionError(args.cmd)


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


if __name__ == "__main__":
    raise SystemExit(main())
