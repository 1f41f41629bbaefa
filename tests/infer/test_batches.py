"""The minibatches of tensors that tb.fit steps through: batch sizes as tb.fit takes them."""

import numpy as np
import pytest
import torch

import tensorbayes as tb
from tensorbayes.infer.batches import TensorBatches


def test_a_numpy_batch_size_is_an_int():
    # tb.fit took np.int64(4) (an Integral) and then failed in torch's split
    x = torch.arange(10.0)
    batches = TensorBatches(x, np.int64(4), torch.Generator().manual_seed(0))
    assert type(batches.batch_size) is int and len(batches) == 3
    assert sorted(torch.cat([b for (b,) in batches]).tolist()) == x.tolist()


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, None])
def test_a_bad_batch_size_is_named(batch_size):
    # 0 was a ZeroDivisionError from len(), 2.5 a TypeError from torch's split
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TensorBatches(torch.arange(10.0), batch_size, torch.Generator())


def test_fit_with_a_numpy_batch_size():
    model = tb.models.TensorCompletion((4, 5, 6), format="cp", max_rank=2, noise=0.1)
    guide = tb.guides.MeanField(model, seed=0)
    index = torch.stack([torch.arange(20) % 4, torch.arange(20) % 5, torch.arange(20) % 6], -1)
    history = tb.fit(model, guide, (index, torch.randn(20)), epochs=1, batch_size=np.int64(8), progress=False, seed=0)
    assert history.steps == 3
