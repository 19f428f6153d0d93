import pytest
import torch

import tokencredit as tc
from helpers import rollouts


def test_top_fraction_of_batch_entropy_is_kept():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0]])
    r = rollouts([1.0, 0.0], [0, 0], [3, 4], entropy=entropy)  # 7.0 is padding and must not count
    adv = tc.get("advantage", "grpo")(r)
    w = tc.get("weight", "forking_tokens")(r, adv, top=2 / 7)  # 7 real tokens → keep the top 2
    assert w.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    w_all = tc.get("weight", "forking_tokens")(r, adv, top=1.0)
    torch.testing.assert_close(w_all, r.mask.float())


def test_forking_rejects_bad_fraction():
    r = rollouts([1.0], [0], [2], entropy=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="top"):
        tc.get("weight", "forking_tokens")(r, torch.zeros(1, 2), top=0.0)
