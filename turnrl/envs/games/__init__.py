"""Text games, each with a scripted reference player: Guess-the-number, Wordle, Maze,
FrozenLake, Twenty Questions and WILT."""
from turnrl.envs.games.base import GameEnv, PlayResult, play
from turnrl.envs.games.grid import FrozenLakeEnv, MazeEnv, ShortestPathPlayer
from turnrl.envs.games.guess_number import BinarySearchPlayer, GuessNumberEnv
from turnrl.envs.games.twenty_questions import SplitPlayer, TwentyQuestionsEnv
from turnrl.envs.games.wilt import HypothesisPlayer, WILTEnv
from turnrl.envs.games.wordle import CandidatePlayer, WordleEnv

__all__ = ["GameEnv", "PlayResult", "play", "GuessNumberEnv", "BinarySearchPlayer", "WordleEnv", "CandidatePlayer",
           "MazeEnv", "FrozenLakeEnv", "ShortestPathPlayer", "TwentyQuestionsEnv", "SplitPlayer", "WILTEnv",
           "HypothesisPlayer"]
