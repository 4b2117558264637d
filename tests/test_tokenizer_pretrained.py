"""HFTokenizer: a Hugging Face tokenizer.json behind bardlet's tokenizer methods, trained here
with the `tokenizers` library (byte-level, as GPT-2's) so nothing is downloaded."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bardlet.tokenizer import DEFAULT_SPECIAL_TOKENS, HFTokenizer, Tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")

TEXT = ["To be, or not to be, that is the question.", "Hello! How can I help you today? ü ß 日本"]


def byte_level(specials=("<|endoftext|>",)) -> HFTokenizer:
    from tokenizers import Tokenizer as Fast
    from tokenizers import decoders, models, pre_tokenizers, trainers

    fast = Fast(models.BPE())
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    fast.train_from_iterator(TEXT * 20, trainer)
    return HFTokenizer(fast.to_str())


@pytest.fixture(scope="module")
def gpt2_like() -> HFTokenizer:
    return byte_level()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_and_bytes_per_token(gpt2_like, text):
    ids = gpt2_like.encode(text)
    assert gpt2_like.decode(ids) == text
    # bits per byte divides by these: they must add up to the text's UTF-8 length
    lengths = gpt2_like.byte_lengths()
    assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))


def test_same_ids_as_the_library(gpt2_like):
    from tokenizers import Tokenizer as Fast

    fast = Fast.from_str(gpt2_like.text)
    for text in TEXT:
        assert gpt2_like.encode(text) == fast.encode(text).ids
    assert gpt2_like.encode_batch(TEXT) == [fast.encode(t).ids for t in TEXT]


def test_chat_tokens_are_added_after_the_vocabulary_and_never_typed(gpt2_like):
    chat = gpt2_like.with_chat_tokens()
    size = gpt2_like.vocab_size
    assert chat.vocab_size == size + len(DEFAULT_SPECIAL_TOKENS)
    assert [chat.special_id(t) for t in DEFAULT_SPECIAL_TOKENS] == list(
        range(size, chat.vocab_size)
    )
    assert chat.special_id("<|endoftext|>") == gpt2_like.special_id("<|endoftext|>")
    # a user who types a marker gets its characters, not the token
    typed = chat.encode("<|user|>hi<|assistant|><|endoftext|>")
    assert not set(typed) & set(chat.special_tokens.values())
    assert chat.decode(typed) == "<|user|>hi<|assistant|><|endoftext|>"
    assert chat.with_chat_tokens() is chat  # has them all: unchanged
    assert chat.byte_lengths()[chat.special_id("<|end|>")] == 0


def test_a_tokenizer_that_has_the_markers_keeps_their_ids():
    own = byte_level(specials=("<|endoftext|>", *DEFAULT_SPECIAL_TOKENS))
    ids = dict(own.special_tokens)
    assert own.with_chat_tokens() is own and own.special_tokens == ids


def test_load_tokenizer_picks_by_file(tmp_path, gpt2_like):
    gpt2_like.save(tmp_path / "hf" / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "hf")
    assert isinstance(loaded, HFTokenizer) and loaded.hash == gpt2_like.hash
    ours = Tokenizer.train(TEXT, vocab_size=300)
    ours.save(tmp_path / "ours" / "bpe.json")
    gpt2_like.save(tmp_path / "ours" / "tokenizer.json")  # an export has both: bpe.json wins
    assert isinstance(load_tokenizer(tmp_path / "ours"), Tokenizer)


def test_not_a_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)
