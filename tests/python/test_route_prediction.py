"""Cross-layer route prediction (MoETransformer.predict_routes, issue I item 2): the
prediction is the block's own router on the block's input with attention skipped, and the
"actual" side is the routing the block really uses."""

import pytest
import torch

import switchyard
from switchyard import trace
from switchyard.config import loads_config
from switchyard.nn import MoETransformer

SMALL = ["model.vocab_size=256", "model.d_model=32", "model.n_layers=3", "model.n_heads=2", "model.n_kv_heads=2",
         "model.ffn_hidden=64", "model.max_seq_len=16", "moe.num_experts=8", "moe.top_k=2", "moe.ffn_hidden=16",
         "model.dtype=float64", "data.seq_len=12"]


def model_of(*extra):
    switchyard.init()
    torch.manual_seed(0)
    return MoETransformer.from_config(loads_config("", overrides=SMALL + list(extra)))


def ids(seed=1):
    return torch.randint(256, (3, 12), generator=torch.Generator().manual_seed(seed))


def test_without_attention_the_prediction_is_exact():
    model = model_of()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("self_attn.o_proj.weight"):
                p.zero_()  # attention adds nothing: skipping it changes no router input
    preds = model.predict_routes(ids())
    assert [p["block"] for p in preds] == [1, 2]
    for p in preds:
        assert p["predicted"].shape == (36, 2)
        assert torch.equal(p["predicted"], p["actual"]), p["block"]


def test_actual_is_the_routing_the_block_uses():
    """The "actual" ids counted per expert equal what the routing observer records in a
    training forward of the same tokens (no jitter, no capacity limit)."""
    model = model_of()
    stats = trace.for_model(model)
    model.train()
    model(ids(), ids(2))
    preds = model.predict_routes(ids())
    assert model.training  # the training flag is restored
    for layer, p in enumerate(preds, start=1):
        counts = torch.bincount(p["actual"].flatten(), minlength=8).double()
        assert torch.equal(counts, stats.layer(layer)["tokens"]), layer
    # The attention matters: with random weights the prediction is right often, not always.
    recall = torch.stack([(p["predicted"].unsqueeze(2) == p["actual"].unsqueeze(1)).any(1).float().mean()
                          for p in preds])
    assert (recall > 0.25).all() and (recall < 1).any(), recall


def test_expert_choice_has_nothing_to_predict():
    model = model_of("moe.router=expert_choice", "moe.capacity_factor=1.0")
    with pytest.raises(ValueError, match="only the top-k router"):
        model.predict_routes(ids())


def test_input_shape_is_checked():
    with pytest.raises(ValueError, match=r"expected input_ids of shape \[B, S\]"):
        model_of().predict_routes(torch.zeros(5, dtype=torch.long))
