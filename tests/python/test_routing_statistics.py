"""Routing statistics and trace files (switchyard.trace, docs/routing_trace.md).

Every statistic against an independent float64 reference built with Python loops from the
routing (kept slots only), the EMA arithmetic, the MoE layer hook (top-k with drops and
null / zero-computation experts, expert choice; eval and no-grad passes not recorded), the
trace file round trip, the CLI summary and the refusals; the multi-rank checks run under
mpirun (mpi_scripts/routing_statistics.py).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import switchyard
from switchyard import trace
from switchyard.nn import MoELayer, MoETransformer
from switchyard.ops import route_expert_choice, route_topk

SCRIPTS = Path(__file__).parent / "mpi_scripts"
KEYS = ("tokens", "tokens_ema", "traffic", "coactivation", "transitions")


# --- reference ---------------------------------------------------------------------------------

class Reference:
    """The statistics by definition, one token at a time (float64 numpy)."""

    def __init__(self, experts, R, rank, decay):
        self.experts, self.R, self.rank, self.decay = experts, R, rank, decay
        L = len(experts)
        self.tokens = [np.zeros(E) for E in experts]
        self.step = [np.zeros(E) for E in experts]
        self.ema = [np.zeros(E) for E in experts]
        self.traffic = [np.zeros((R, E)) for E in experts]
        self.co = [np.zeros((E, E)) for E in experts]
        self.tr = [np.zeros((experts[l], experts[l + 1])) for l in range(L - 1)]
        self.skipped = [0] * L
        self.steps = 0
        self.prev = None  # (layer, list of chosen-expert sets)

    def record(self, l, topk, kept):
        E = self.experts[l]
        chosen = []
        for t in range(topk.shape[0]):
            s = [int(e) for e, k in zip(topk[t].tolist(), kept[t].tolist()) if k and 0 <= e < E]
            chosen.append(s)
            for e in s:
                self.tokens[l][e] += 1
                self.step[l][e] += 1
                self.traffic[l][self.rank, e] += 1
            for a in s:
                for b in s:
                    if a != b:
                        self.co[l][a, b] += 1
        if l > 0:
            if self.prev is not None and self.prev[0] == l - 1 and len(self.prev[1]) == len(chosen):
                for before, after in zip(self.prev[1], chosen):
                    for i in before:
                        for j in after:
                            self.tr[l - 1][i, j] += 1
            else:
                self.skipped[l - 1] += 1
        self.prev = (l, chosen)

    def end_step(self):
        for l in range(len(self.experts)):
            self.ema[l] = self.step[l].copy() if self.steps == 0 else self.decay * self.ema[l] + (1 - self.decay) * self.step[l]
            self.step[l][:] = 0
        self.steps += 1
        self.prev = None

    def check(self, stats):
        assert stats.steps == self.steps
        for l in range(len(self.experts)):
            d = stats.layer(l)
            for k in KEYS:
                assert d[k] is None or d[k].dtype == torch.float64, k
            np.testing.assert_array_equal(d["tokens"].numpy(), self.tokens[l])
            np.testing.assert_allclose(d["tokens_ema"].numpy(), self.ema[l], rtol=1e-14, atol=0)
            np.testing.assert_array_equal(d["traffic"].numpy(), self.traffic[l])
            np.testing.assert_array_equal(d["coactivation"].numpy(), self.co[l])
            if l + 1 < len(self.experts):
                np.testing.assert_array_equal(d["transitions"].numpy(), self.tr[l])
            else:
                assert d["transitions"] is None
            assert d["transitions_skipped"] == self.skipped[l]


def random_routing(g, T, K, E, extra, p_kept=0.75):
    topk = torch.stack([torch.randperm(E + extra, generator=g)[:K] for _ in range(T)]) if T else \
        torch.zeros(0, K, dtype=torch.long)
    kept = torch.rand(T, K, generator=g) < p_kept
    return topk, kept


# --- the statistics themselves -----------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 4])
def test_statistics_equal_reference_on_random_routings(K):
    experts, R, rank, decay = [6, 4, 5], 3, 1, 0.7
    stats = trace.RoutingStatistics(experts, R, rank, decay)
    ref = Reference(experts, R, rank, decay)
    g = torch.Generator().manual_seed(K)
    for step in range(3):
        for micro in range(2):
            T = 7 + 3 * micro + step
            for l, E in enumerate(experts):
                topk, kept = random_routing(g, T, min(K, E), E, extra=3)  # ids >= E: null / zero-compute
                stats.record(l, topk, kept)
                ref.record(l, topk, kept)
        stats.end_step()
        ref.end_step()
        ref.check(stats)
    # a pending step counts in tokens, not yet in the EMA
    topk, kept = random_routing(g, 5, min(K, 6), 6, 3)
    stats.record(0, topk, kept)
    ref.record(0, topk, kept)
    np.testing.assert_array_equal(stats.layer(0)["tokens"].numpy(), ref.tokens[0])
    np.testing.assert_allclose(stats.layer(0)["tokens_ema"].numpy(), ref.ema[0], rtol=1e-14)
    # only this rank's traffic row is filled
    for l in range(len(experts)):
        traffic = stats.layer(l)["traffic"]
        assert traffic[[0, 2]].abs().sum() == 0
        assert torch.equal(traffic[rank], stats.layer(l)["tokens"])


def test_coactivation_is_symmetric_with_zero_diagonal():
    stats = trace.RoutingStatistics([8], 1, 0)
    g = torch.Generator().manual_seed(0)
    topk, kept = random_routing(g, 50, 3, 8, 0, p_kept=1.0)
    stats.record(0, topk, kept)
    co = stats.layer(0)["coactivation"]
    assert torch.equal(co, co.T) and co.diagonal().abs().sum() == 0
    # every token with 3 kept slots contributes 3 pairs
    assert co.sum() / 2 == 50 * 3


def test_dropped_null_and_zero_compute_slots_do_not_count():
    stats = trace.RoutingStatistics([4, 4], 1, 0)
    topk = torch.tensor([[0, 5], [1, 2], [4, 3]])  # 4, 5: ids >= E (null / zero-computation)
    kept = torch.tensor([[True, True], [True, False], [True, True]])
    stats.record(0, topk, kept)
    assert stats.layer(0)["tokens"].tolist() == [1, 1, 0, 1]
    assert stats.layer(0)["coactivation"].sum() == 0  # no token kept two real experts
    stats.record(1, torch.tensor([[1], [1], [2]]), torch.ones(3, 1, dtype=torch.bool))
    tr = stats.layer(0)["transitions"]
    assert tr[0, 1] == 1 and tr[1, 1] == 1 and tr[3, 2] == 1 and tr.sum() == 3


def test_ema_arithmetic_and_reset():
    stats = trace.RoutingStatistics([2], 1, 0, ema_decay=0.5)
    one = lambda e: (torch.tensor([[e]]), torch.tensor([[True]]))  # noqa: E731
    stats.record(0, *one(0))
    stats.end_step()  # the first step sets the EMA
    assert stats.layer(0)["tokens_ema"].tolist() == [1.0, 0.0]
    stats.record(0, *one(1))
    stats.record(0, *one(1))
    stats.end_step()  # 0.5 * [1, 0] + 0.5 * [0, 2]
    assert stats.layer(0)["tokens_ema"].tolist() == [0.5, 1.0]
    stats.end_step()  # an empty step decays
    assert stats.layer(0)["tokens_ema"].tolist() == [0.25, 0.5]
    assert stats.steps == 3 and stats.layer(0)["tokens"].tolist() == [1.0, 2.0]
    stats.reset()
    d = stats.layer(0)
    assert stats.steps == 0 and all(float(d[k].abs().sum()) == 0 for k in ("tokens", "tokens_ema", "traffic"))
    stats.record(0, *one(1))
    stats.end_step()  # after reset the first step sets the EMA again
    assert stats.layer(0)["tokens_ema"].tolist() == [0.0, 1.0]


def test_transitions_skip_mismatched_or_missing_previous_layer():
    stats = trace.RoutingStatistics([3, 3, 3], 1, 0)
    a = (torch.tensor([[0], [1]]), torch.ones(2, 1, dtype=torch.bool))
    b = (torch.tensor([[2], [2], [2]]), torch.ones(3, 1, dtype=torch.bool))
    stats.record(0, *a)
    stats.record(1, *b)  # T differs: skipped
    assert stats.layer(0)["transitions"].sum() == 0 and stats.layer(0)["transitions_skipped"] == 1
    stats.record(2, *b)  # layer 1 -> 2 matches
    assert stats.layer(1)["transitions"][2, 2] == 3
    stats.record(2, *b)  # layer 2 again without layer 1 before it
    assert stats.layer(1)["transitions_skipped"] == 1
    stats.end_step()
    stats.record(1, *b)  # a step boundary forgets the previous layer
    assert stats.layer(0)["transitions_skipped"] == 2


def test_zero_tokens_and_argument_errors():
    stats = trace.RoutingStatistics([3], 1, 0)
    stats.record(0, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.bool))
    assert stats.layer(0)["tokens"].sum() == 0
    with pytest.raises(ValueError, match="kept"):
        stats.record(0, torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="int64"):
        stats.record(0, torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(IndexError, match="layer 1 out of range"):
        stats.record(1, torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="source_rank"):
        trace.RoutingStatistics([3], 2, 2)
    with pytest.raises(ValueError, match="ema_decay"):
        trace.RoutingStatistics([3], 1, 0, 1.0)


def test_placement_problem_from_statistics():
    stats = trace.RoutingStatistics([4], 2, 1)
    stats.record(0, torch.tensor([[0, 1], [1, 3]]), torch.ones(2, 2, dtype=torch.bool))
    p = stats.placement_problem(0)  # no step ended: the totals
    assert p.load == [1, 2, 0, 1] and p.num_ranks == 2
    assert p.traffic == [0, 0, 0, 0, 1, 2, 0, 1]
    assert p.coactivation[0 * 4 + 1] == 1 and p.coactivation[1 * 4 + 3] == 1 and sum(p.coactivation) == 4


# --- the MoE layer hook ------------------------------------------------------------------------

def chosen_from_grouped(token_index, expert_index):
    """kept (token, expert) pairs from a routing's grouped arrays (not from kept_slots)."""
    keep = expert_index >= 0
    return list(zip(token_index[keep].tolist(), expert_index[keep].tolist()))


def record_pairs(ref, l, T, pairs):
    topk = torch.full((T, max(1, len(pairs))), 10 ** 6, dtype=torch.long)
    kept = torch.zeros_like(topk, dtype=torch.bool)
    fill = [0] * T
    for t, e in pairs:
        topk[t, fill[t]] = e
        kept[t, fill[t]] = True
        fill[t] += 1
    ref.record(l, topk, kept)


@pytest.mark.parametrize("variant", ["topk_capacity", "topk_null_zero", "k1", "expert_choice"])
def test_moe_layer_records_its_training_routing(variant):
    switchyard.init()
    torch.manual_seed(0)
    E, K, d = 6, 2, 8
    kw = dict(d_model=d, num_experts=E, top_k=K, ffn_hidden=12, init_std=0.5)
    if variant == "topk_capacity":
        kw.update(capacity_factor=0.6)
    elif variant == "topk_null_zero":
        kw.update(num_null_experts=2, num_zero_experts=1, num_copy_experts=1)
    elif variant == "k1":
        kw.update(top_k=1, capacity_factor=0.8)
    else:
        kw.update(router="expert_choice", capacity_factor=1.0)
    layers = [MoELayer(**kw).double() for _ in range(2)]
    with pytest.raises(ValueError, match="experts"):
        trace.RoutingStatistics([E + 1], 1, 0).attach(layers[0])
    stats0 = trace.RoutingStatistics([E], 1, 0)
    stats1 = trace.RoutingStatistics([E], 1, 0)
    assert stats0.attach(layers[0]) == 1 and stats1.attach(layers[1]) == 1
    ref0, ref1 = Reference([E], 1, 0, 0.9), Reference([E], 1, 0, 0.9)
    for step in range(2):
        x = torch.randn(3, 5, d, dtype=torch.float64)
        h = x
        for layer, ref in ((layers[0], ref0), (layers[1], ref1)):
            out = layer(h)
            logits = out.router_logits.detach()
            o = layer.cpp_module.options
            if o.router == "topk":
                r = route_topk(logits, o.top_k, num_routed_experts=E, capacity_factor=o.capacity_factor)
                pairs = chosen_from_grouped(r.token_index, r.expert_index)
            else:
                r = route_expert_choice(logits, o.capacity_factor, o.top_k)
                pairs = list(zip(r.token_index.tolist(), r.expert_index.tolist()))
            record_pairs(ref, 0, 15, pairs)
            h = out.output
        h.sum().backward()
        for s, ref in ((stats0, ref0), (stats1, ref1)):
            s.end_step()
            ref.end_step()
            ref.check(s)
    if variant == "topk_capacity":
        assert out.num_dropped.item() > 0  # the capacity limit did drop slots


def test_eval_and_no_grad_forwards_do_not_record():
    switchyard.init()
    torch.manual_seed(0)
    layer = MoELayer(d_model=8, num_experts=4, top_k=2, ffn_hidden=8).double()
    stats = trace.RoutingStatistics([4], 1, 0)
    stats.attach(layer)
    x = torch.randn(6, 8, dtype=torch.float64)
    layer.eval()
    layer(x)
    layer.train()
    with torch.no_grad():
        layer(x)
    assert stats.layer(0)["tokens"].sum() == 0
    layer(x)
    assert stats.layer(0)["tokens"].sum() == 12
    trace.RoutingStatistics.detach(layer)
    layer(x)
    assert stats.layer(0)["tokens"].sum() == 12


def test_transformer_attach_records_every_moe_layer_with_transitions():
    switchyard.init()
    torch.manual_seed(0)
    model = MoETransformer(vocab_size=31, d_model=16, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=24,
                           max_seq_len=16, moe_layer_freq=1, first_k_dense=1, init_std=0.1,
                           moe=dict(num_experts=4, top_k=2, ffn_hidden=12))
    layers = trace.moe_layers(model)
    assert [l["num_experts"] for l in layers] == [4, 4, 4] and all(l["top_k"] == 2 for l in layers)
    stats = trace.for_model(model)
    assert [i["name"] for i in stats.layer_info] == [l["name"] for l in layers]
    ids = torch.randint(0, 31, (2, 7))
    out = model(ids, ids)
    (out.loss + out.aux_loss).backward()
    stats.end_step()
    for l in range(3):
        d = stats.layer(l)
        assert d["tokens"].sum() == 2 * 14  # no capacity limit: every token keeps 2 slots
        if l < 2:
            assert d["transitions"].sum() == 14 * 4 and d["transitions_skipped"] == 0
    del stats  # the hook holds a weak reference: the model keeps running
    model(ids, ids)


# --- trace files ---------------------------------------------------------------------------------

def recorded(experts=(4, 3), R=2, steps=2, seed=0):
    stats = trace.RoutingStatistics(list(experts), R, 1, 0.8)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for l, E in enumerate(experts):
            stats.record(l, *random_routing(g, 9, 2, E, 1))
        stats.end_step()
    return stats


def test_trace_round_trip(tmp_path):
    stats = recorded()
    path = tmp_path / "routing.safetensors"
    trace.save(path, stats, world_size=4, note="unit test")
    t = trace.load(path)
    assert t.format_version == 1 and t.created["world_size"] == 4 and t.created["note"] == "unit test"
    assert t.created["utc"].endswith("Z") and t.created["unix_time"] > 0
    s = t.statistics
    assert s.steps == 2 and s.num_source_ranks == 2 and s.ema_decay == 0.8 and list(s.experts_per_layer) == [4, 3]
    for l in range(2):
        for k in KEYS:
            a, b = s.layer(l)[k], stats.layer(l)[k]
            assert (a is None and b is None) or torch.equal(a, b), (l, k)
    assert t.total_tokens == [float(stats.layer(l)["tokens"].sum()) for l in range(2)]
    trace.check_matches(t, [4, 3], 2)


def test_trace_is_plain_safetensors(tmp_path):
    path = tmp_path / "t.safetensors"
    trace.save(path, recorded())
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["switchyard.routing_trace"])
    assert header["__metadata__"]["format"] == "switchyard.routing_trace"
    assert meta["experts_per_layer"] == [4, 3] and meta["num_ranks"] == 2 and meta["num_layers"] == 2
    assert header["layer0.traffic"]["shape"] == [2, 4] and header["layer0.traffic"]["dtype"] == "F64"
    assert "layer1.transitions" not in header


def rewrite_metadata(src, dst, edit):
    raw = Path(src).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["switchyard.routing_trace"])
    edit(meta, header)
    header["__metadata__"]["switchyard.routing_trace"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(dst).write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def test_trace_refusals_name_the_file_and_field(tmp_path):
    good = tmp_path / "good.safetensors"
    trace.save(good, recorded())
    bad = tmp_path / "bad.safetensors"

    rewrite_metadata(good, bad, lambda m, h: m.update(format_version=2))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*'format_version' is 2"):
        trace.load(bad)
    rewrite_metadata(good, bad, lambda m, h: m.update(experts_per_layer=[4, 3, 2]))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*'experts_per_layer'"):
        trace.load(bad)
    rewrite_metadata(good, bad, lambda m, h: m.update(experts_per_layer=[5, 3]))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*'layer0\.tokens'.*shape"):
        trace.load(bad)
    rewrite_metadata(good, bad, lambda m, h: m.update(total_tokens=[1.0, 2.0]))
    with pytest.raises(ValueError, match=r"'total_tokens'"):
        trace.load(bad)
    rewrite_metadata(good, bad, lambda m, h: m.pop("num_ranks"))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*no field 'num_ranks'"):
        trace.load(bad)
    rewrite_metadata(good, bad, lambda m, h: h["__metadata__"].update(format="something else"))
    with pytest.raises(ValueError, match=r"not a switchyard routing trace"):
        trace.load(bad)

    raw = good.read_bytes()
    flipped = bytearray(raw)
    flipped[-3] ^= 0x40  # a bit of the last tensor's data
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"bad\.safetensors: tensor '.*' is corrupt \(CRC-32"):
        trace.load(bad)
    bad.write_bytes(raw[: len(raw) - 16])  # truncated
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        trace.load(bad)
    bad.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        trace.load(bad)

    t = trace.load(good)
    with pytest.raises(ValueError, match=r"good\.safetensors was recorded on a model with 4 experts in MoE layer 0, "
                                         r"this model has 8"):
        trace.check_matches(t, [8, 3], 2)
    with pytest.raises(ValueError, match=r"2 MoE layers, this model has 3"):
        trace.check_matches(t, [4, 3, 3], 2)
    with pytest.raises(ValueError, match=r"2 expert-parallel ranks, this job has 4"):
        trace.check_matches(t, [4, 3], 4)


def test_cli_summary_prints_expected_numbers(tmp_path, capsys):
    stats = trace.RoutingStatistics([4, 4], 2, 0, 0.5)
    # rank 0 sends 3 tokens: experts {0,1}, {0,1}, {2,3}; layer 1 follows 0->2, 0->2, 2->3
    stats.record(0, torch.tensor([[0, 1], [0, 1], [2, 3]]), torch.ones(3, 2, dtype=torch.bool))
    stats.record(1, torch.tensor([[2], [2], [3]]), torch.ones(3, 1, dtype=torch.bool))
    stats.end_step()
    path = tmp_path / "cli.safetensors"
    trace.save(path, stats)
    assert trace.main([str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    l0 = s["layers"][0]
    assert l0["tokens"] == 6 and l0["load"]["max"] == 2 and l0["load"]["mean"] == 1.5
    assert l0["hottest"][0] == {"expert": 0, "tokens": 2.0, "share": 2 / 6}
    # contiguous placement on 2 ranks: experts 0,1 on rank 0, 2,3 on rank 1; rank 0 sent 2 of 6 to rank 1
    assert math.isclose(l0["cross_rank_fraction_contiguous"], 2 / 6)
    assert l0["top_coactivated"][0]["experts"] == [0, 1] and l0["top_coactivated"][0]["tokens"] == 2
    # transitions: 0->2 x2, 1->2 x2, 2->3, 3->3; every layer-0 expert has one successor
    assert l0["transition_concentration"] == 1.0
    assert trace.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "layer 0: 6 routed slots (token-expert assignments) over 4 experts" in text and "cross-rank tokens under contiguous placement: 33.3%" in text
    assert "top co-activated pairs: 0+1 (2, 33.3% of slots), 2+3 (1, 16.7% of slots)" in text
    assert "transition concentration: 100.0%" in text
    assert trace.main([str(tmp_path / "missing.safetensors")]) == 2


@pytest.mark.mpi
@pytest.mark.parametrize("np_", [2])
def test_multi_rank_statistics(run_mpi, np_):
    out = run_mpi(np_, str(SCRIPTS / "routing_statistics.py"), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("routing statistics ok") == np_, out.stdout + out.stderr
