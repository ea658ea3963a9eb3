from turnrl.engine.base import Engine, GenRequest, GenResult, SamplingParams
from turnrl.engine.hf import HFEngine
from turnrl.engine.prefix_cache import PrefixCache

__all__ = ["Engine", "GenRequest", "GenResult", "SamplingParams", "HFEngine", "PrefixCache"]
