import torch
from transformers import DynamicCache

from turnrl.engine.kv import GrowingCache


@torch.no_grad()
def test_growing_cache_gives_the_dynamic_caches_logits_and_writes_in_place(tiny_model):
    ids = torch.randint(5, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    outs, ptrs = {}, []
    for cls in (DynamicCache, GrowingCache):
        cache, logits = cls(), []
        logits.append(tiny_model(input_ids=ids, cache=cache, use_cache=True).logits)
        for i in range(5):
            logits.append(tiny_model(input_ids=ids[:, i:i + 1], position_ids=torch.full((3, 1), 12 + i), cache=cache,
                                     use_cache=True).logits)
            if cls is GrowingCache:
                ptrs.append(cache.layers[0]._k.data_ptr())
        cache.batch_select_indices(torch.tensor([2, 0]))  # rows leave, as when episodes finish
        logits.append(tiny_model(input_ids=ids[[2, 0], :1], position_ids=torch.full((2, 1), 17), cache=cache,
                                 use_cache=True).logits)
        outs[cls] = logits
        assert cache.get_seq_length() == 18
    for a, b in zip(outs[DynamicCache], outs[GrowingCache]):
        assert torch.equal(a, b)
    assert len(set(ptrs)) == 1  # 12 + 5 tokens fit the first buffer (12 + 64 slots): no copy per step
