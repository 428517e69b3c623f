"""switchyard.data: every format round-trips; sharding is disjoint and covers the epoch;
resume is bitwise; bad inputs fail with messages that name the file or key; the bundled
corpus is there and its BPE cache is reused."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from switchyard.config import loads_config
from switchyard.data import (DataError, TokenLoader, build_dataset, load_tokenizer_file, read_tokens,
                             train_bpe, unigram_entropy, write_tokens)
from switchyard.data import cache as data_cache

REPO_ROOT = Path(__file__).resolve().parents[2]

DOCS = ["Hello, world.\nSecond line.\n", "Ünïcödé — “quotes”\n\n  indented\n", "last one without newline"]


def make_cfg(**data):
    """A config with small defaults and ``data.<key>=<value>`` for each keyword."""
    sets = {"model.vocab_size": data.pop("vocab_size", 256), "data.val_fraction": 0.0,
            "data.seq_len": data.pop("seq_len", 4), "model.max_seq_len": 4096, "train.seed": data.pop("seed", 7)}
    sets.update({f"data.{k}": v for k, v in data.items()})
    return loads_config("", overrides=[f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in sets.items()])


def byte_stream(docs):
    out = []
    for d in docs:
        out += list(d.encode("utf-8")) + [0]
    return out


def whole_stream(train, val):
    parts = [np.asarray(train.tokens)] + ([np.asarray(val.tokens)] if val is not None else [])
    return np.concatenate(parts).tolist()


# --- formats round-trip ---------------------------------------------------------------------

def test_text_folder_round_trips(tmp_path):
    root = tmp_path / "texts"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (root / "b" / "c.txt").write_text(DOCS[1], encoding="utf-8")
    (root / "b" / "skip.md").write_text("not read", encoding="utf-8")
    train, val, info = build_dataset(make_cfg(source="text", path=str(root)), cache_dir=str(tmp_path / "cache"))
    assert val is None and info.eos_id == 0
    assert np.asarray(train.tokens).tolist() == byte_stream(DOCS[:2])
    assert info.tokenizer.decode(train.tokens[:len(DOCS[0].encode())]) == DOCS[0]


def test_jsonl_round_trips_with_val_split(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)) + "\n\n", encoding="utf-8")
    train, val, info = build_dataset(make_cfg(source="jsonl", path=str(path), val_fraction=0.25),
                                     cache_dir=str(tmp_path / "cache"))
    stream = byte_stream(DOCS)
    n_val = int(len(stream) * 0.25)
    assert info.n_val_tokens == n_val and len(val.tokens) == n_val
    assert whole_stream(train, val) == stream           # split by position, nothing lost


@pytest.mark.parametrize("dtype, top", [("uint16", 65535), ("uint32", 70000)])
def test_token_files_round_trip(tmp_path, dtype, top):
    ids = np.random.default_rng(0).integers(0, top + 1, size=1000)
    ids[7] = top
    path = tmp_path / "train.bin"
    write_tokens(str(path), ids, dtype)
    assert path.stat().st_size == 1000 * (2 if dtype == "uint16" else 4)
    assert np.asarray(read_tokens(str(path), dtype)).tolist() == ids.tolist()
    cfg = make_cfg(source="tokens", path=str(path), token_dtype=dtype, vocab_size=top + 1, val_fraction=0.1)
    train, val, _ = build_dataset(cfg)
    assert whole_stream(train, val) == ids.tolist() and len(val.tokens) == 100
    # nanoGPT's folder convention: train.bin + val.bin; val_fraction is then not used
    write_tokens(str(tmp_path / "val.bin"), ids[:50], dtype)
    train, val, _ = build_dataset(make_cfg(source="tokens", path=str(tmp_path), token_dtype=dtype,
                                           vocab_size=top + 1, val_fraction=0.1))
    assert np.asarray(train.tokens).tolist() == ids.tolist() and np.asarray(val.tokens).tolist() == ids[:50].tolist()


def test_bpe_round_trips_and_is_deterministic(tmp_path):
    docs = [d * 20 for d in DOCS] + ["a  b\n\n\nc\t\n d\n"]
    tok = train_bpe(docs, 300, str(tmp_path / "t1.json"))
    again = train_bpe(docs, 300, str(tmp_path / "t2.json"))
    assert (tmp_path / "t1.json").read_bytes() == (tmp_path / "t2.json").read_bytes()
    assert tok.eos_id == 0 and 257 < tok.vocab_size <= 300
    stream = tok.encode_documents(docs, np.dtype(np.uint32)).tolist()
    expected = []
    for d in docs:  # encoding line by line (Note [Encoding in lines]) equals encoding whole documents
        expected += tok.encode(d) + [0]
        assert tok.decode(tok.encode(d)) == d
    assert stream == expected
    # the same tokenizer as a tokenizer.json path gives the same ids through the pipeline
    (tmp_path / "corpus.txt").write_text(docs[0], encoding="utf-8")
    train, _, info = build_dataset(make_cfg(source="text", path=str(tmp_path / "corpus.txt"),
                                            tokenizer=str(tmp_path / "t1.json"), vocab_size=300),
                                   cache_dir=str(tmp_path / "cache"))
    assert np.asarray(train.tokens).tolist() == again.encode(docs[0]) + [0] and info.vocab_size == tok.vocab_size


def test_batches_are_windows_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    loader = TokenLoader(tokens, seq_len=16, rank=0, world_size=1, seed=3)
    idx = loader.next_indices(4)
    loader.load_state_dict({**loader.state_dict(), "cursor": 0})
    x, y = loader.next_batch(4)
    assert x.dtype == torch.int64 and x.shape == (4, 16) == y.shape
    for row, i in enumerate(idx):
        assert x[row].tolist() == list(range(16 * i, 16 * i + 16))
        assert y[row].tolist() == list(range(16 * i + 1, 16 * i + 17))


# --- sharding and resume ----------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_read_disjoint_samples_that_cover_the_epoch(world):
    tokens = np.arange(1 + 8 * 103, dtype=np.uint32)         # 103 samples of 8: not divisible by 2, 3, 4
    loaders = [TokenLoader(tokens, 8, r, world, seed=11) for r in range(world)]
    n = loaders[0].num_samples
    per_rank = n // world
    seen = [loader.next_indices(per_rank).tolist() for loader in loaders]
    union = set().union(*map(set, seen))
    assert sum(map(len, seen)) == len(union) == world * per_rank  # disjoint
    assert union == set(loaders[0].permutation(0)[:world * per_rank].tolist())  # the epoch's order
    assert n - len(union) == n % world                            # at most world - 1 left for next epoch
    # deterministic: a new set of loaders gives the same shards; the next read starts epoch 1
    assert [TokenLoader(tokens, 8, r, world, seed=11).next_indices(per_rank).tolist() for r in range(world)] == seen
    assert all(loader.state_dict()["epoch"] == 0 for loader in loaders)
    loaders[0].next_indices(1)
    assert loaders[0].state_dict()["epoch"] == 1
    # over two epochs every sample is read (the skipped tail differs)
    assert sorted(set(loaders[0].permutation(0)) | set(loaders[0].permutation(1))) == list(range(n))
    assert TokenLoader(tokens, 8, 0, world, seed=12).permutation(0).tolist() != loaders[0].permutation(0).tolist()


@pytest.mark.parametrize("world", [1, 3])
def test_resume_mid_epoch_reproduces_the_batches_bitwise(world):
    tokens = np.random.default_rng(1).integers(0, 500, size=1500).astype(np.uint16)
    runs = [TokenLoader(tokens, 10, r, world, seed=5) for r in range(world)]
    for loader in runs:
        for _ in range(7):
            loader.next_batch(6)
    state = runs[0].state_dict()
    assert all(loader.state_dict() == state for loader in runs)   # one state for all ranks
    expected = [[loader.next_batch(6) for _ in range(20)] for loader in runs]  # crosses epochs
    assert runs[0].state_dict()["epoch"] >= 1
    for r in range(world):
        resumed = TokenLoader(tokens, 10, r, world, seed=5)
        resumed.load_state_dict(state)
        for (x0, y0), (x1, y1) in zip(expected[r], (resumed.next_batch(6) for _ in range(20))):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_resume_on_another_world_size_continues_the_epoch():
    tokens = np.arange(1 + 4 * 120, dtype=np.uint16)
    two = [TokenLoader(tokens, 4, r, 2, seed=9) for r in range(2)]
    read = set()
    for loader in two:
        read |= set(loader.next_indices(10).tolist())
    three = [TokenLoader(tokens, 4, r, 3, seed=9) for r in range(3)]
    for loader in three:
        loader.load_state_dict(two[0].state_dict())
    rest = [set(loader.next_indices(26).tolist()) for loader in three]  # 20 + 78 = 98 <= 120
    assert not (read & set().union(*rest)) and sum(map(len, rest)) == 78


# --- bad inputs -----------------------------------------------------------------------------

def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"data.path: .*nowhere.txt: no such file"):
        build_dataset(make_cfg(source="text", path=str(tmp_path / "nowhere.txt")), cache_dir=str(tmp_path))


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: bad JSON"):
        build_dataset(make_cfg(source="jsonl", path=str(path)), cache_dir=str(tmp_path))
    path.write_text('{"text": "ok"}\n\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:3: expected an object with a 'text' key"):
        build_dataset(make_cfg(source="jsonl", path=str(path)), cache_dir=str(tmp_path))


def test_token_id_beyond_vocab_names_file_and_position(tmp_path):
    write_tokens(str(tmp_path / "t.bin"), [1, 2, 300, 4, 5, 6, 7, 8, 9, 10], "uint16")
    with pytest.raises(DataError, match=r"t.bin: token id 300 at position 2 is >= model.vocab_size 256"):
        build_dataset(make_cfg(source="tokens", path=str(tmp_path / "t.bin")))
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match=r"odd.bin: size 3 bytes is not a multiple of 2"):
        build_dataset(make_cfg(source="tokens", path=str(tmp_path / "odd.bin")))


def test_seq_len_too_long_names_the_key(tmp_path):
    write_tokens(str(tmp_path / "t.bin"), np.arange(100), "uint16")
    with pytest.raises(DataError, match=r"data.seq_len 64 is too long for the train split"):
        build_dataset(make_cfg(source="tokens", path=str(tmp_path / "t.bin"), seq_len=64), 0, 2)
    with pytest.raises(DataError, match=r"data.val_fraction 0.1 leaves 10 validation tokens"):
        build_dataset(make_cfg(source="tokens", path=str(tmp_path / "t.bin"), seq_len=16, val_fraction=0.1))


def test_tokenizer_larger_than_model_vocab_names_both(tmp_path):
    train_bpe([d * 20 for d in DOCS], 300, str(tmp_path / "tok.json"))
    (tmp_path / "c.txt").write_text(DOCS[0], encoding="utf-8")
    with pytest.raises(DataError, match=r"data.tokenizer: .*tok.json has \d+ ids, more than model.vocab_size 260"):
        build_dataset(make_cfg(source="text", path=str(tmp_path / "c.txt"), tokenizer=str(tmp_path / "tok.json"),
                               vocab_size=260), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"data.tokenizer: .*missing.json: no such file"):
        load_tokenizer_file(str(tmp_path / "missing.json"), 1000)


def test_restoring_state_of_other_data_fails():
    loader = TokenLoader(np.arange(100, dtype=np.uint16), 4, 0, 1, seed=1)
    with pytest.raises(DataError, match=r"saved with num_samples 7"):
        loader.load_state_dict({**loader.state_dict(), "num_samples": 7})


# --- cache and corpus -------------------------------------------------------------------------

def _build_in_process(args):
    root, log = args

    def build(tmp):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.3)
        Path(tmp, "tokens.bin").write_bytes(b"\0\0")
        return {"tokens": 1}

    return data_cache.get_or_build(root, "race", "k", build)


def test_concurrent_builders_build_once(tmp_path):
    log = str(tmp_path / "log")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        folders = pool.map(_build_in_process, [(str(tmp_path / "cache"), log)] * 4)
    assert len(set(folders)) == 1 and Path(log).read_text() == "built\n"
    assert sorted(os.listdir(tmp_path / "cache")) == ["race-k", "race-k.lock"]


def test_unigram_entropy():
    assert unigram_entropy(np.array([3, 3, 3], dtype=np.uint16), 8) == 0.0
    assert unigram_entropy(np.arange(8, dtype=np.uint16).repeat(5), 8) == pytest.approx(np.log(8))


def test_bundled_corpus_with_cached_bpe(tmp_path):
    cfg = make_cfg(source="bundled", tokenizer="bpe", vocab_size=2048, seq_len=128, val_fraction=0.05)
    t0 = time.perf_counter()
    train, val, info = build_dataset(cfg, 1, 2, cache_dir=str(tmp_path))
    first = time.perf_counter() - t0
    assert info.meta["bytes"] > 4_000_000 and info.meta["documents"] >= 80   # the whole WEB
    assert info.vocab_size == 2048 and info.eos_id == 0
    assert info.n_val_tokens == int(info.meta["tokens"] * 0.05) and val is not None
    assert 3.0 < train.unigram_entropy() < 7.0
    text = info.tokenizer.decode(np.asarray(train.tokens[:30000]).tolist())
    assert "In the beginning, God created the heavens and the earth." in text
    t0 = time.perf_counter()
    train2, _, info2 = build_dataset(cfg, 1, 2, cache_dir=str(tmp_path))
    second = time.perf_counter() - t0
    assert info2.cache_dir == info.cache_dir and second < min(1.0, first / 5)
    assert torch.equal(train.next_batch(4)[0], train2.next_batch(4)[0])


def test_prepare_command(tmp_path, capsys):
    from switchyard.data.__main__ import main

    (tmp_path / "c.txt").write_text(DOCS[0] * 50, encoding="utf-8")
    args = ["prepare", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--set", "data.source=text",
            "--set", "data.tokenizer=byte", "--set", "model.vocab_size=256", "--set", "data.seq_len=16", "--cache-dir", str(tmp_path / "cache"), "--set"]
    assert main(args + [f"data.path={tmp_path / 'c.txt'}"]) == 0
    out = capsys.readouterr().out
    assert "unigram entropy of the train tokens" in out and "byte, 256 ids" in out
    assert main(args + ["data.path=/nonexistent.txt"]) == 1
    assert "error: data.path: /nonexistent.txt: no such file" in capsys.readouterr().err


def test_config_refuses_bpe_without_room_for_merges():
    from switchyard.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.vocab_size: vocab_size 256 leaves no room for merges"):
        make_cfg(tokenizer="bpe", vocab_size=256)
