"""Training-rollout recipes, as pure functions the trainer's ``collect`` applies.

- **Branch groups** (REFUEL, arXiv 2410.04612): ``branch_points`` picks sampled episodes
  with at least two turns and a turn ``h`` in ``[1, turns - 1]``; the trainer replays their
  first ``h`` replies as frozen context and samples a new group from there, so the group's
  episodes share a prefix up to turn ``h`` and diverge after it.
- **Fewer turns** (MinD, arXiv 2505.19788): ``apply_turn_penalty`` lowers the reward of a
  solved episode by ``c`` per turn before the one that solved it.
- **Turn-cap annealing** (WMAct): ``turn_cap`` is the cap of training episodes at a step,
  from ``rollout.max_turns_schedule``; evaluation keeps ``env.max_turns``.
"""
from __future__ import annotations

import random

from turnrl.types import Episode


def turn_cap(schedule: list[tuple[int, int]] | list[list[int]], step: int, default: int) -> int:
    """The cap of the last ``[from_step, cap]`` entry with ``from_step <= step``; ``default``
    (the env's cap) before the first entry."""
    cap = default
    for start, value in schedule:
        if start <= step:
            cap = value
    return cap


def apply_turn_penalty(episodes: list[Episode], penalty: float) -> int:
    """In place: a solved episode's solving turn (the first whose ``info["correct"]`` is true)
    loses ``penalty * (k - 1)``, k its 1-based position among all the episode's turns
    (replayed ones included: they are turns the solution took), but the penalty never takes
    that turn's reward below 0 (uncapped, UFO's 1/16 for a fifth-turn solve fell below an
    unsolved episode's 0 at any penalty above 1/64); a solving turn already at or below 0
    (e.g. UFO's repetition penalty on it) keeps its reward. Returns how many episodes'
    rewards the penalty lowered. Unsolved episodes are left alone."""
    n = 0
    for ep in episodes:
        for k, turn in enumerate(ep.turns, start=1):
            if turn.info.get("correct"):
                if k > 1 and not turn.frozen:
                    r = float(turn.reward)
                    turn.reward = max(r - penalty * (k - 1), min(r, 0.0))
                    n += turn.reward < r
                break
    return n


def branch_points(episodes: list[Episode], n: int, rng: random.Random) -> list[tuple[Episode, int]]:
    """Up to ``n`` ``(episode, h)`` pairs, at most one per group: groups are visited in an
    order shuffled by ``rng``; in each, one episode with at least two turns is drawn and
    ``h`` uniformly from ``[1, turns - 1]``. Episodes with replayed turns are skipped."""
    groups: dict[int, list[Episode]] = {}
    for ep in episodes:
        if len(ep.turns) >= 2 and not any(t.frozen for t in ep.turns):
            groups.setdefault(ep.group_id, []).append(ep)
    order = list(groups)
    rng.shuffle(order)
    out = []
    for gid in order[:n]:
        ep = rng.choice(groups[gid])
        out.append((ep, rng.randint(1, len(ep.turns) - 1)))
    return out


def check_recipes(cfg, max_turns: int) -> None:
    """Errors for recipe settings the env makes meaningless (``max_turns``: the env's cap)."""
    import inspect

    from turnrl.config import ConfigError
    from turnrl.envs.registry import resolve

    r = cfg.rollout
    if r.branch_groups and max_turns < 2:
        raise ConfigError(f"rollout.branch_groups = {r.branch_groups} would be ignored: episodes have at most "
                          f"{max_turns} turn (env max_turns), so no turn is left to branch at")
    if not r.max_turns_schedule:
        return
    above = [cap for _, cap in r.max_turns_schedule if cap > max_turns]
    if above:
        raise ConfigError(f"rollout.max_turns_schedule: cap {above[0]} is above the env's max_turns {max_turns}; "
                          "the schedule can only lower the cap")
    params = inspect.signature(resolve(cfg.env.name)).parameters
    takes = "max_turns" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if cfg.env.name != "retry" and not takes:
        raise ConfigError(f"rollout.max_turns_schedule would be ignored: env {cfg.env.name!r} takes no max_turns "
                          "argument")
