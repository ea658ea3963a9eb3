from turnrl.envs.base import Env, EnvStepError
from turnrl.envs.check import EnvCheckError, check_env, check_split
from turnrl.envs.registry import make, register, registered, resolve
from turnrl.envs.retry import RetryEnv
from turnrl.envs.tasks import ArithmeticTasks, DataError, FileTasks, Task

from turnrl.envs.adapters import GymTextEnv, TextArenaEnv
from turnrl.envs.feedback import FeedbackEnv, ModelUser, RuleBasedUser, UserSimulator
from turnrl.envs.games import FrozenLakeEnv, GuessNumberEnv, MazeEnv, TwentyQuestionsEnv, WILTEnv, WordleEnv
from turnrl.envs.search import SearchEnv
from turnrl.envs.tir import TIREnv

register("retry", RetryEnv)
register("feedback", FeedbackEnv)
register("tir", TIREnv)
register("search", SearchEnv)
register("guess_number", GuessNumberEnv)
register("wordle", WordleEnv)
register("maze", MazeEnv)
register("frozen_lake", FrozenLakeEnv)
register("twenty_questions", TwentyQuestionsEnv)
register("wilt", WILTEnv)
register("textarena", TextArenaEnv)
register("gym", GymTextEnv)

__all__ = ["Env", "EnvStepError", "RetryEnv", "TIREnv", "FeedbackEnv", "SearchEnv", "UserSimulator", "RuleBasedUser", "ModelUser",
           "TextArenaEnv", "GymTextEnv", "GuessNumberEnv", "WordleEnv", "MazeEnv", "FrozenLakeEnv", "TwentyQuestionsEnv", "WILTEnv", "Task", "ArithmeticTasks", "FileTasks", "DataError", "check_env",
           "check_split", "EnvCheckError", "make", "register", "registered", "resolve"]
