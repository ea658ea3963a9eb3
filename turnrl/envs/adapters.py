"""Adapters: TextArena's single-player games and Gymnasium environments that render
text, as turnrl envs (both pass ``check_env``). ``pip install turnrl[adapters]``."""
from __future__ import annotations

import contextlib
import io
import re

from turnrl.envs.base import Env, check_split
from turnrl.types import Message, Step

#: The adapted libraries draw each instance from their own seed, so the split is by seed
#: ranges: train seeds are ``0 .. EVAL_SEEDS - 1``, eval seed ``i`` plays the library's
#: seed ``EVAL_SEEDS + i``. Disjoint seeds, not verified disjoint instances: a library
#: whose instance ignores the seed (Gymnasium's FrozenLake-v1 has one fixed map) plays
#: the same instance in both splits, and evaluation's distinct-instance count shows it.
EVAL_SEEDS = 10**9


def library_seed(split: str, seed: int) -> int:
    if not 0 <= seed < EVAL_SEEDS:
        raise ValueError(f"seed {seed} is outside 0..{EVAL_SEEDS - 1} (the {split} split's range)")
    return seed + EVAL_SEEDS if split == "eval" else seed

# Single-player TextArena games that run offline (checked with check_env in the tests).
# Word games (Wordle, Hangman, WordLadder, SpellingBee, WordSearch) download NLTK's word
# list when they start, TwentyQuestions / GuessWho call a hosted model, and Countdown,
# Cryptarithm and ThreeCardMonte (textarena 0.7.4) raise on malformed moves: not offered.
TEXTARENA_OFFLINE = ("GuessTheNumber-v0", "Mastermind-v0", "Sokoban-v0", "FrozenLake-v0", "TowerOfHanoi-v0",
                     "Minesweeper-v0", "2048-v0", "FifteenPuzzle-v0", "LightsOut-v0", "Crosswords-v0", "Sudoku-v0",
                     "PegJump-v0", "Bandit-v0", "Blackjack-v0", "LogicPuzzle-v0", "Secretary-v0")


class TextArenaEnv(Env):
    """A TextArena single-player game. Reward: the game's own at the end (1 win, -1 or 0
    loss, fractions for partial credit); ``correct`` when it is positive."""

    def __init__(self, game: str = "GuessTheNumber-v0", max_turns: int = 30, split: str = "train"):
        self.split = check_split(split)
        if game not in TEXTARENA_OFFLINE:
            raise ValueError(f"TextArena game {game!r} is not supported offline (it downloads data or calls a hosted "
                             f"model); supported: {', '.join(TEXTARENA_OFFLINE)}")
        try:
            import textarena  # noqa: F401
        except ImportError as e:
            raise ImportError("the TextArena adapter needs the textarena package: pip install 'turnrl[adapters]'") from e
        self.game, self.max_turns = game, max_turns
        self.env = None

    def _quiet(self, fn, *args, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):  # some games print progress
            return fn(*args, **kwargs)

    def reset(self, seed: int) -> list[Message]:
        import textarena as ta

        self.env = self._quiet(ta.make, self.game)
        self._quiet(self.env.reset, num_players=1, seed=library_seed(self.split, seed))
        self.turn = 0
        _, obs = self.env.get_observation()
        self.shown = _text(obs)
        return [Message("user", self.shown)]

    def _new_text(self, obs) -> str:
        """Only what was added since the last observation (TextArena repeats the history)."""
        text = _text(obs)
        new = text[len(self.shown):] if text.startswith(self.shown) else text
        self.shown = text
        return new.strip() or text

    def step(self, action: str) -> Step:
        if self.env is None:
            raise RuntimeError("call reset() before step()")
        self.turn += 1
        try:
            done, info = self._quiet(self.env.step, action=action)
        except Exception as e:  # noqa: BLE001 - a game that chokes on model output ends the episode, not the run
            return Step([], 0.0, True, False, {"game_error": f"{type(e).__name__}: {e}"}, valid=False, correct=False)
        if done:
            rewards, game_info = self._quiet(self.env.close)
            r = float(rewards.get(0, 0.0)) if isinstance(rewards, dict) else float(rewards[0])
            reason = (game_info or {}).get(0, {}).get("reason", "") if isinstance(game_info, dict) else ""
            return Step([], r, True, False, {"reason": str(reason)}, valid=True, correct=r > 0)
        _, obs = self.env.get_observation()
        last = self.turn >= self.max_turns
        return Step([] if last else [Message("user", self._new_text(obs))], 0.0, False, last,
                    valid=True, correct=False, answer=action.strip())


def _text(obs) -> str:
    if isinstance(obs, str):
        return obs.strip()
    return "\n".join(str(m[1]) if isinstance(m, tuple) and len(m) > 1 else str(m) for m in obs).strip()


# Action names of Gymnasium's text-rendering toy-text envs (index = action id).
GYM_ACTIONS = {
    "FrozenLake-v1": ["left", "down", "right", "up"],
    "CliffWalking-v1": ["up", "right", "down", "left"],
}


_HIGHLIGHT = re.compile(r"\x1b\[4\dm(.)\x1b\[0m")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def render_text(frame) -> str:
    """An ``ansi`` frame as plain text: a highlighted cell (the agent) becomes ``@``,
    other terminal colour codes are dropped."""
    return _ANSI.sub("", _HIGHLIGHT.sub("@", str(frame))).strip()


class GymTextEnv(Env):
    """A Gymnasium env with ``render_mode="ansi"`` and a discrete action space: the model
    sees the text rendering and replies with an action name (or its number). A reply
    naming no action is invalid and replays the last action-free observation."""

    def __init__(self, env_id: str = "FrozenLake-v1", max_turns: int = 50, actions: list[str] | None = None,
                 split: str = "train", **make_kwargs):
        self.split = check_split(split)
        try:
            import gymnasium
        except ImportError as e:
            raise ImportError("the Gymnasium adapter needs gymnasium: pip install 'turnrl[adapters]'") from e
        self.env = gymnasium.make(env_id, render_mode="ansi", **make_kwargs)
        n = getattr(self.env.action_space, "n", None)
        if n is None:
            raise ValueError(f"{env_id}: only discrete action spaces are supported, not {self.env.action_space}")
        self.actions = actions or GYM_ACTIONS.get(env_id) or [str(i) for i in range(int(n))]
        if len(self.actions) != int(n):
            raise ValueError(f"{env_id}: {len(self.actions)} action names for {n} actions")
        self.env_id, self.max_turns = env_id, max_turns
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, self.actions)) + r"|\d+)\b", re.I)

    def _observe(self, note: str = "") -> Message:
        return Message("user", (note + "\n" if note else "") + render_text(self.env.render()) +
                       f"\nActions: {', '.join(self.actions)}.")

    def reset(self, seed: int) -> list[Message]:
        self.env.reset(seed=library_seed(self.split, seed))
        self.turn = 0
        self.opening = render_text(self.env.render())
        return [Message("user", f"You are playing {self.env_id} (@ marks you where the map highlights you). "
                                "Reply with one action per turn."), self._observe()]

    def instance(self) -> str:
        """The starting rendering (a map that ignores the seed is one instance)."""
        return self.opening

    def state(self) -> str:
        return render_text(self.env.render())

    def parse(self, action: str) -> int | None:
        for tok in reversed(self._pattern.findall(action)):
            if tok.isdigit():
                if int(tok) < len(self.actions):
                    return int(tok)
            else:
                return [a.lower() for a in self.actions].index(tok.lower())
        return None

    def step(self, action: str) -> Step:
        self.turn += 1
        last = self.turn >= self.max_turns
        a = self.parse(action)
        if a is None:
            return Step([] if last else [self._observe("That is not an action.")], 0.0, False, last,
                        valid=False, correct=False)
        _, reward, terminated, truncated, _ = self.env.step(a)
        end = terminated or truncated or last
        return Step([] if end else [self._observe()], float(reward), bool(terminated), bool(not terminated and end),
                    valid=True, correct=bool(terminated and reward > 0), answer=self.actions[a].lower())
