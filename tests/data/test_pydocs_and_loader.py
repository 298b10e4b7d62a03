"""The offline corpus and the block loader."""

import numpy as np
import pytest
import torch

from data.loader import RandomBlockLoader, fixed_batches, token_dtype, tokenize_documents
from data.sources import DataError, get_source, split_of
from tokenization.tokenizer import byte_tokenizer


def test_pydocs_is_real_english_with_disjoint_splits():
    source = get_source("pydocs")
    train, val = list(source.documents("train")), list(source.documents("val"))
    assert sum(map(len, train)) > 1_000_000 and sum(map(len, val)) > 20_000
    assert not set(train) & set(val)
    assert any("Return" in doc for doc in train)  # docstrings, in English
    assert list(source.documents("val")) == val  # the same every time


def test_split_depends_only_on_the_document_id():
    assert split_of("module:json/decoder") == split_of("module:json/decoder")
    ids = [f"doc{i}" for i in range(10_000)]
    share = sum(split_of(i) == "val" for i in ids) / len(ids)
    assert 0.03 < share < 0.07


def test_unknown_source_and_split():
    with pytest.raises(DataError, match="unknown data source 'nope'"):
        get_source("nope")
    with pytest.raises(DataError, match="unknown split"):
        list(get_source("pydocs").documents("test"))


def test_documents_are_packed_with_endoftext_before_each():
    tok = byte_tokenizer()
    tokens = tokenize_documents(["ab", "", "c"], tok)
    assert tokens.tolist() == [256, 97, 98, 256, 256, 99]
    assert tokens.dtype == np.uint16
    assert token_dtype(70_000) == np.uint32


def test_batches_are_shifted_blocks_of_the_stream():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = RandomBlockLoader(tokens, block_size=16, batch_size=4, seed=0).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))


def test_loader_resumes_with_the_same_batches():
    tokens = np.arange(5000, dtype=np.uint16)
    uninterrupted = RandomBlockLoader(tokens, 32, 8, seed=7)
    expected = [uninterrupted.next_batch() for _ in range(6)]
    first = RandomBlockLoader(tokens, 32, 8, seed=7)
    for _ in range(3):
        first.next_batch()
    resumed = RandomBlockLoader(tokens, 32, 8, seed=123)
    resumed.load_state_dict(first.state_dict())
    for x, y in expected[3:]:
        rx, ry = resumed.next_batch()
        assert torch.equal(rx, x) and torch.equal(ry, y)


def test_validation_batches_are_identical_every_time():
    tokens = np.arange(5000, dtype=np.uint16)
    a, b = fixed_batches(tokens, 32, 4, 3), fixed_batches(tokens, 32, 4, 3)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataError, match="block needs 33"):
        RandomBlockLoader(np.arange(10, dtype=np.uint16), 32, 1, seed=0)
