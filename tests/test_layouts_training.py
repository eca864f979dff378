"""Training layouts (docs/design.md §3): the k=2 example of issue 3, every visibility rule, the prefix-cache variant."""

from __future__ import annotations

import pytest
import torch

from mtp.layouts import IGNORE, default_anchors, interleaved_layout, mask_blocks_layout

X = [100, 101, 102, 103, 104, 105]  # x0..x5


def test_k2_example_of_the_issue():
    layout = interleaved_layout(X, k=2, prompt_len=1, anchors=[0, 1, 2])
    assert layout.input_ids.tolist() == [100, -1, -2, 101, -1, -2, 102, -1, -2]
    assert layout.position_ids.tolist() == [0, 1, 2, 1, 2, 3, 2, 3, 4]
    assert layout.labels.tolist() == [101, 102, 103, 102, 103, 104, 103, 104, 105]
    # rows/cols: x0 a1 a2 x1 b1 b2 x2 c1 c2
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # x0: itself
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # a1: x0, itself
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # a2: x0, a1, itself
        [1, 0, 0, 1, 0, 0, 0, 0, 0],  # x1: x0, itself (never a mask)
        [1, 0, 0, 1, 1, 0, 0, 0, 0],  # b1: x0 x1, itself (not block a)
        [1, 0, 0, 1, 1, 1, 0, 0, 0],  # b2
        [1, 0, 0, 1, 0, 0, 1, 0, 0],  # x2: x0 x1 itself
        [1, 0, 0, 1, 0, 0, 1, 1, 0],  # c1
        [1, 0, 0, 1, 0, 0, 1, 1, 1],  # c2
    ], dtype=torch.bool)
    assert torch.equal(layout.attention, expected)
    # Each mask's LCM target is the real token at its position (x3, x4: not in this layout).
    assert layout.same_position_real.tolist() == [0, 1, 2, 1, 2, -1, 2, -1, -1]


@pytest.mark.parametrize("k, length, prompt_len", [(1, 7, 3), (3, 9, 2), (4, 12, 5), (8, 15, 1)])
def test_every_visibility_rule_on_the_full_layout(k, length, prompt_len):
    ids = list(range(10, 10 + length))
    layout = interleaved_layout(ids, k, prompt_len)
    real_index, offset, current = [], [], -1
    for token in layout.input_ids.tolist():
        if token >= 0:
            current += 1
        real_index.append(current)
        offset.append(-token if token < 0 else 0)
    for q in range(len(offset)):
        for key in range(len(offset)):
            sees = bool(layout.attention[q, key])
            same_block = real_index[q] == real_index[key]
            if offset[q] == 0:  # real token: earlier reals and itself only
                assert sees == (offset[key] == 0 and real_index[key] <= real_index[q]), (q, key)
            elif offset[key] == 0:  # mask -> real: its own prefix x_0..x_j
                assert sees == (real_index[key] <= real_index[q]), (q, key)
            else:  # mask -> mask: its own block up to itself, never another block
                assert sees == (same_block and offset[key] <= offset[q]), (q, key)
    # Blocks only after the last prompt token and every labelled response token.
    anchors = [real_index[q] for q in range(len(offset)) if offset[q] == 1]
    assert anchors == default_anchors(length, prompt_len) == list(range(prompt_len - 1, length - 1))
    # Positions and labels: x_j at j -> x_{j+1}; mask i after x_j at j+i -> x_{j+i+1}, IGNORE past the end.
    for q in range(len(offset)):
        j, i = real_index[q], offset[q]
        assert layout.position_ids[q] == j + i
        label = ids[j + i + 1] if j + i + 1 < length else IGNORE
        if i == 0 and j < prompt_len - 1:
            label = IGNORE  # prompt tokens learn nothing
        assert layout.labels[q] == label


def test_prefix_cache_layout_is_the_mask_rows_of_the_full_layout():
    ids = list(range(50, 70))
    k, prompt_len, anchors = 3, 4, [3, 6, 7, 12, 18]
    full = interleaved_layout(ids, k, prompt_len, anchors)
    cached = max(anchors) + 1
    blocks = mask_blocks_layout(ids, k, anchors, cached)
    masks = full.is_mask
    reals = ~masks
    for name in ("input_ids", "position_ids", "labels", "same_position_real"):
        assert torch.equal(getattr(blocks, name), getattr(full, name)[masks]), name
    # Visibility onto the cache == onto the real tokens; onto masks == onto the mask columns.
    assert torch.equal(blocks.attention[:, :cached], full.attention[masks][:, reals])
    assert torch.equal(blocks.attention[:, cached:], full.attention[masks][:, masks])
    assert blocks.attention.shape == (len(anchors) * k, cached + len(anchors) * k)


def test_layouts_refuse_bad_anchors():
    with pytest.raises(ValueError, match="anchors must lie in"):
        interleaved_layout(X, 2, 1, anchors=[5])  # x5 has no label
    with pytest.raises(ValueError, match="at least one anchor"):
        interleaved_layout(X, 2, 1, anchors=[])
    with pytest.raises(ValueError, match="anchors must lie in"):
        mask_blocks_layout(X, 2, [3], cached=3)  # the cache does not hold x3
