from turnrl.engine.base import Engine, GenRequest, GenResult, SamplingParams
from turnrl.engine.hf import HFEngine

__all__ = ["Engine", "GenRequest", "GenResult", "SamplingParams", "HFEngine"]
