from turnrl.envs.base import Env
from turnrl.envs.check import EnvCheckError, check_env
from turnrl.envs.registry import make, register, registered, resolve
from turnrl.envs.retry import RetryEnv
from turnrl.envs.tasks import ArithmeticTasks, DataError, FileTasks, Task

from turnrl.envs.tir import TIREnv

register("retry", RetryEnv)
register("tir", TIREnv)

__all__ = ["Env", "RetryEnv", "TIREnv", "Task", "ArithmeticTasks", "FileTasks", "DataError", "check_env",
           "EnvCheckError", "make", "register", "registered", "resolve"]
