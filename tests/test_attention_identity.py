"""The count-weighted softmax: attention with a log(s) bias over segment means equals
plain attention over the means each repeated s times (prism-method.md)."""
import math

import pytest
import torch
from timm.layers import Attention

from costmodel.formulas import segment_sizes
from runtime.models.vit import attention
from runtime.parallel.prism import segment_mean_matrix


@pytest.mark.parametrize("rows,m", [(99, 10), (17, 4), (8, 8)])
def test_log_bias_equals_repeated_means(rows, m):
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, qkv_bias=True).eval()
    own = torch.randn(2, 7, 32)
    remote = torch.randn(2, rows, 32)
    means = segment_mean_matrix(rows, m) @ remote
    sizes = segment_sizes(rows, m)
    bias = torch.cat([torch.zeros(7), torch.tensor([math.log(s) for s in sizes])]).view(1, 1, 1, -1)
    biased = attention(attn, own, torch.cat([own, means], 1), bias)
    repeated = torch.cat([own, means.repeat_interleave(torch.tensor(sizes), dim=1)], 1)
    plain = attention(attn, own, repeated, None)
    torch.testing.assert_close(biased, plain, atol=1e-5, rtol=1e-5)
    if any(s > 1 for s in sizes):   # without the bias the means are under-weighted
        unbiased = attention(attn, own, torch.cat([own, means], 1), None)
        assert (unbiased - plain).abs().max() > 1e-3


def test_segment_means_follow_tensor_split():
    x = torch.randn(1, 99, 5)
    a = segment_mean_matrix(99, 10) @ x
    ref = torch.stack([s.mean(1) for s in x.tensor_split(10, dim=1)], 1)
    torch.testing.assert_close(a, ref)
    assert segment_sizes(99, 10) == [10] * 9 + [9]


def test_split_qkv_attention_equals_timm_forward():
    torch.manual_seed(1)
    attn = Attention(48, num_heads=3, qkv_bias=True).eval()
    x = torch.randn(3, 11, 48)
    torch.testing.assert_close(attention(attn, x, x, None), attn(x), atol=1e-5, rtol=1e-5)
