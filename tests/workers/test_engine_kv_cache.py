"""The engine's slotted KV cache on its own: rows stay dense and keep their contents as they move and grow."""

import torch

from workers.kv_cache import KVShape, SlotKVCache

SHAPE = KVShape(layers=2, kv_heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))


def filled(cache: SlotKVCache, value: float, length: int) -> int:
    row = cache.add(length + 1)
    cache.load_prefix(row, torch.full((2, 2, 1, length, 2), value), length)
    return row


def test_rows_stay_dense_when_one_leaves():
    cache = SlotKVCache(SHAPE, max_rows=8, max_len=64)
    for value, length in ((1.0, 3), (2.0, 5), (3.0, 4)):
        filled(cache, value, length)
    assert cache.remove(0) == 2  # the last row moved into the hole
    assert cache.lengths == [4, 5]
    assert torch.equal(cache.export(0), torch.full((2, 2, 1, 4, 2), 3.0))
    assert torch.equal(cache.export(1), torch.full((2, 2, 1, 5, 2), 2.0))
    assert cache.remove(1) is None
    cache.remove(0)
    cache.release()
    assert cache.rows == 0 and cache.nbytes == 0


def test_prefill_appends_a_chunk_to_one_row():
    cache = SlotKVCache(SHAPE, max_rows=8, max_len=64)
    filled(cache, 1.0, 3)
    row = filled(cache, 2.0, 2)
    view = cache.row_view(row)
    chunk = torch.full((1, 1, 3, 2), 5.0)  # [batch 1, heads, 3 positions, dim]
    for layer in range(2):
        keys, values = view.update(chunk, chunk, layer)
        assert keys.shape == (1, 1, 5, 2)
        assert keys[0, 0, :, 0].tolist() == [2.0, 2.0, 5.0, 5.0, 5.0]
    view.commit()
    assert cache.lengths == [3, 5]


def test_decode_writes_each_row_at_its_own_position_and_grows():
    cache = SlotKVCache(SHAPE, max_rows=8, max_len=1024)
    filled(cache, 1.0, 2)
    filled(cache, 2.0, 255)
    positions, mask = cache.decode_inputs()  # 255 + 1 fits exactly the first 256-token capacity
    assert positions.flatten().tolist() == [2, 255]
    assert mask.shape == (2, 1, 1, 256)
    assert (mask[0, 0, 0, :3] == 0).all() and (mask[0, 0, 0, 3:] < -1e30).all()
    new = torch.tensor([[[[7.0, 7.0]]], [[[8.0, 8.0]]]])  # [rows, heads, 1, dim]
    for layer in range(2):
        keys, values = cache.update(new, new, layer)
        assert keys.shape == (2, 1, 256, 2)
    cache.commit([True, False])  # row 1 fed a placeholder: its length stays
    assert cache.lengths == [3, 255]
    assert cache.export(0)[:, :, 0, 2].eq(7.0).all()
    cache.commit([True, True])
    cache.decode_inputs()  # row 1 now needs position 256: the capacity grows, contents kept
    assert cache.data.shape[4] > 256
    assert cache.export(1)[:, :, 0, :255].eq(2.0).all()


def test_a_byte_budget_caps_growth_but_keeps_room_promised_to_prefilling_rows():
    per_token = SHAPE.bytes_per_token
    cache = SlotKVCache(SHAPE, max_rows=8, max_len=2048, max_bytes=3 * 64 * per_token)
    waiting = cache.add(60)  # admitted, its 60-token prompt not prefilled yet
    filled(cache, 1.0, 3)
    filled(cache, 2.0, 4)  # doubling to 4 rows x 256 would overshoot: growth is clamped
    assert cache.nbytes <= 3 * 64 * per_token
    view = cache.row_view(waiting)
    for layer in range(SHAPE.layers):
        view.update(torch.full((1, 1, 60, 2), 7.0), torch.full((1, 1, 60, 2), 7.0), layer)
    view.commit()
    assert torch.equal(cache.export(waiting), torch.full((2, 2, 1, 60, 2), 7.0))
    assert torch.equal(cache.export(1), torch.full((2, 2, 1, 3, 2), 1.0))
    assert cache.peak_nbytes <= 3 * 64 * per_token
