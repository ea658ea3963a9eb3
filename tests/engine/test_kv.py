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


def _filled(rows: int, slots: int) -> GrowingCache:
    """A one-layer cache whose row r, slot s holds keys 100 r + s (values: the negatives)."""
    k = (100 * torch.arange(rows)[:, None] + torch.arange(slots)).float()[:, None, :, None].expand(rows, 1, slots, 2)
    return GrowingCache.from_layers([(k.contiguous(), -k.contiguous())])


def test_select_moves_only_the_rows_whose_place_changes():
    cache = _filled(5, 3)
    layer = cache.layers[0]
    ptr, written = layer._k.data_ptr(), []
    orig = layer._k.index_copy_
    layer._k.index_copy_ = lambda dim, idx, src: (written.append(idx.tolist()), orig(dim, idx, src))[1]
    cache.select([4, 1, 2])  # row 4 takes row 0's place; rows 1 and 2 stay
    assert written == [[0]]
    assert layer.keys[:, 0, :, 0].tolist() == [[400, 401, 402], [100, 101, 102], [200, 201, 202]]
    assert layer.values[:, 0, 0, 0].tolist() == [-400, -100, -200]
    assert layer._k.data_ptr() == ptr and cache.get_seq_length() == 3
    cache.select([0, 0, 2, 1])  # more rows than before: a new buffer
    assert layer.keys[:, 0, 0, 0].tolist() == [400, 400, 200, 100]
    cache.batch_select_indices(torch.tensor([True, False, True, False]))  # a mask, as DynamicCache takes it
    assert layer.keys[:, 0, 0, 0].tolist() == [400, 200]


def test_parked_rows_wait_behind_the_running_ones_and_come_back_with_zeroed_slots():
    cache = _filled(4, 2)
    cache.select([0, 3, 2, 1])  # the engine puts the rows to park last
    cache.park(2)  # rows 2 and 1 stop
    layer = cache.layers[0]
    assert layer.keys.shape[0] == 2
    step = torch.full((2, 1, 1, 2), 7.0)
    cache.update(step, step, 0)  # the running rows take one slot, the parked ones do not
    cache.park(1)  # row 3 stops after that slot
    cache.update(step[:1], step[:1], 0)
    cache.unpark([(1, 1), (2, 2)])  # buffer order behind row 0: row 3 (parked one slot ago), then rows 2 and 1
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 1, 7, 7], [300, 301, 7, 0], [200, 201, 0, 0], [100, 101, 0, 0]]
    assert cache.get_seq_length() == 4
    cache.trim(1)  # the first slot goes: an offset, no copy
    assert layer.keys[:, 0, :, 0].tolist() == [[1, 7, 7], [301, 7, 0], [201, 0, 0], [101, 0, 0]]
    cache.update(torch.ones(4, 1, 70, 2), torch.ones(4, 1, 70, 2), 0)  # past the buffer: a new one holds all
    assert layer.keys[:, 0, :4, 0].tolist() == [[1, 7, 7, 1], [301, 7, 0, 1], [201, 0, 0, 1], [101, 0, 0, 1]]
    assert cache.get_seq_length() == 73
