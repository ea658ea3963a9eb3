"""Grid games with text maps: LMRL-Gym's Maze (arXiv 2311.18232) and FrozenLake."""
from __future__ import annotations

import re
from collections import deque

from turnrl.envs.games.base import GameEnv, split_of
from turnrl.types import Message, Step

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
_MOVE = re.compile(r"\b(up|down|left|right)\b", re.IGNORECASE)


def parse_move(text: str) -> str | None:
    """The last direction word in the reply."""
    found = _MOVE.findall(text)
    return found[-1].lower() if found else None


def shortest_path(grid: list[str], start: tuple[int, int], goal: tuple[int, int], blocked: str) -> list[str] | None:
    """Moves of a shortest path avoiding cells whose character is in ``blocked``."""
    prev = {start: None}
    q = deque([start])
    while q:
        cell = q.popleft()
        if cell == goal:
            path = []
            while prev[cell] is not None:
                cell, move = prev[cell]
                path.append(move)
            return path[::-1]
        for move, (dr, dc) in MOVES.items():
            r, c = cell[0] + dr, cell[1] + dc
            if 0 <= r < len(grid) and 0 <= c < len(grid[0]) and grid[r][c] not in blocked and (r, c) not in prev:
                prev[(r, c)] = (cell, move)
                q.append((r, c))
    return None


class _Grid(GameEnv):
    """A new map per seed; a map belongs to the eval split when the hash of its text says
    so (``eval_fraction`` of all maps), so train and eval maps never coincide."""

    def __init__(self, max_turns: int | None, split: str, eval_fraction: float):
        super().__init__(max_turns, split)
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction={eval_fraction} must be between 0 and 1")
        self.eval_fraction = eval_fraction

    def draw(self, seed: int, make) -> list[str]:
        """The first map ``make(rng)`` builds (None: unusable) that lies in this split."""
        for attempt in range(10_000):
            grid = make(self.rng(seed, attempt))
            if grid is not None and split_of("\n".join(grid), self.eval_fraction) == self.split:
                return grid
        raise RuntimeError(f"{type(self).__name__}: no {self.split} map for seed {seed} in 10,000 draws")

    def instance(self) -> str:
        return "\n".join(self.grid)

    def state(self) -> tuple:
        return self.instance(), self.pos

    def render(self) -> str:
        rows = [list(r) for r in self.grid]
        rows[self.pos[0]][self.pos[1]] = "A"
        return "\n".join("".join(r) for r in rows)

    def target(self, move: str) -> tuple[int, int]:
        dr, dc = MOVES[move]
        return self.pos[0] + dr, self.pos[1] + dc

    def inside(self, cell: tuple[int, int]) -> bool:
        return 0 <= cell[0] < len(self.grid) and 0 <= cell[1] < len(self.grid[0])


class MazeEnv(_Grid):
    """LMRL-Gym's maze, fully observed: reward -1 per move, -4 for an illegal move (into a
    wall or off the map; the agent stays), 0 for the move that reaches the goal. A new
    maze per seed (randomised depth-first carving), start and goal in opposite corners."""

    max_turns = 40

    def __init__(self, size: int = 4, max_turns: int | None = None, illegal_penalty: float = 4.0, split: str = "train",
                 eval_fraction: float = 0.2):
        super().__init__(max_turns, split, eval_fraction)
        if size < 2:
            raise ValueError(f"size={size} must be >= 2 (cells per side)")
        self.size, self.illegal_penalty = size, illegal_penalty

    def carve(self, rng) -> list[str]:
        """Randomised depth-first carving; start and goal in opposite corners."""
        n = self.size
        grid = [["#"] * (2 * n + 1) for _ in range(2 * n + 1)]
        stack, seen = [(0, 0)], {(0, 0)}
        grid[1][1] = "."
        while stack:
            r, c = stack[-1]
            nxt = [(r + dr, c + dc) for dr, dc in MOVES.values() if 0 <= r + dr < n and 0 <= c + dc < n and (r + dr, c + dc) not in seen]
            if not nxt:
                stack.pop()
                continue
            nr, nc = rng.choice(nxt)
            grid[r + nr + 1][c + nc + 1] = "."
            grid[2 * nr + 1][2 * nc + 1] = "."
            seen.add((nr, nc))
            stack.append((nr, nc))
        grid[2 * n - 1][2 * n - 1] = "G"
        return ["".join(r) for r in grid]

    def reset(self, seed: int) -> list[Message]:
        self.begin()
        self.grid = self.draw(seed, self.carve)
        self.goal = (2 * self.size - 1, 2 * self.size - 1)
        self.pos = (1, 1)
        return [Message("user", "You are A in a maze; # are walls, G is the goal. Move one step at a time: reply with "
                                "up, down, left or right. Each move costs 1 point, bumping into a wall costs 4.\n"
                                + self.render())]

    def step(self, action: str) -> Step:
        last = self.advance()
        move = parse_move(action)
        if move is None:
            return self.reply("Reply with one of: up, down, left, right.\n" + self.render(), -self.illegal_penalty, last,
                              False, None)
        cell = self.target(move)
        if not self.inside(cell) or self.grid[cell[0]][cell[1]] == "#":
            return self.reply(f"You cannot move {move}: there is a wall.\n" + self.render(), -self.illegal_penalty, last,
                              True, move, {"illegal": True})
        self.pos = cell
        if cell == self.goal:
            return self.end(0.0, True, move)
        return self.reply(f"You moved {move}.\n" + self.render(), -1.0, last, True, move)


class FrozenLakeEnv(_Grid):
    """FrozenLake, not slippery: S start, F frozen, H hole (falling in ends the episode),
    G goal (reward 1). A new map per seed, always with a path from S to G."""

    max_turns = 20

    def __init__(self, size: int = 4, holes: float = 0.2, max_turns: int | None = None, split: str = "train",
                 eval_fraction: float = 0.2):
        super().__init__(max_turns, split, eval_fraction)
        self.size, self.holes = size, holes

    def lake(self, rng) -> list[str] | None:
        n = self.size
        grid = [["H" if rng.random() < self.holes else "F" for _ in range(n)] for _ in range(n)]
        grid[0][0], grid[n - 1][n - 1] = "S", "G"
        rows = ["".join(r) for r in grid]
        return rows if shortest_path(rows, (0, 0), (n - 1, n - 1), "H") is not None else None

    def reset(self, seed: int) -> list[Message]:
        self.begin()
        self.grid = self.draw(seed, self.lake)
        n = self.size
        self.pos, self.goal = (0, 0), (n - 1, n - 1)
        return [Message("user", "You are A on a frozen lake: F is ice, H a hole (falling in ends the game), G the goal. "
                                "Reply with up, down, left or right.\n" + self.render())]

    def step(self, action: str) -> Step:
        last = self.advance()
        move = parse_move(action)
        if move is None:
            return self.reply("Reply with one of: up, down, left, right.\n" + self.render(), 0.0, last, False, None)
        cell = self.target(move)
        if self.inside(cell):
            self.pos = cell
        tile = self.grid[self.pos[0]][self.pos[1]]
        if tile == "G":
            return self.end(1.0, True, move)
        if tile == "H":
            return self.end(0.0, False, move, {"fell": True})
        return self.reply(f"You moved {move}.\n" + self.render(), 0.0, last, True, move)


class ShortestPathPlayer:
    """Reference player for both grid games: follows a shortest safe path."""

    def __init__(self, env: _Grid):
        self.path = shortest_path(env.grid, env.pos, env.goal, "#H")

    def act(self, messages: list[Message]) -> str:
        return self.path.pop(0)
