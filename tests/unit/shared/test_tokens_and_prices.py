"""Token counts per rung (tiktoken offline, a local model's tokenizer.json, the named chars/4 fallback) and
prices from the maintained price map, overridable in the catalogue. Real libraries, no network."""

from __future__ import annotations

import pytest
import yaml
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from escalon.errors import ConfigError
from escalon.registry import Rung, load_catalogue
from escalon.tokens import TokenCounters

pytestmark = pytest.mark.unit

PRICE = {"input_per_1m": 1.0, "output_per_1m": 2.0}


def remote(model: str, **fields) -> Rung:
    return Rung(**({"name": "r", "family": "f", "backend": "openai", "model": model,
                    "base_url": "http://127.0.0.1:9/v1", "price": PRICE} | fields))


def test_openai_models_on_cl100k_are_counted_exactly_offline():
    counter = TokenCounters().for_rung(remote("gpt-4-1106-preview"))
    assert counter.name == "tiktoken cl100k_base" and counter.exact
    assert counter.count("hello world") == 2  # "hello", " world"
    assert counter.count("<|endoftext|>") > 1  # special tokens in a prompt are text, not control tokens


def test_o200k_models_fall_back_to_cl100k_when_the_encoding_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty: nothing downloaded before
    counter = TokenCounters().for_rung(remote("openai/gpt-4o-mini"))
    assert not counter.exact and "standing in for o200k_base" in counter.name
    assert counter.count("hello world") == 2


def test_a_model_tiktoken_does_not_know_gets_the_named_estimate():
    counter = TokenCounters().for_rung(remote("mistralai/Mixtral-8x7B-Instruct-v0.1"))
    assert counter.name == "chars/4 (estimate)" and not counter.exact
    assert counter.count("x" * 9) == 3


def local_rung() -> Rung:
    return Rung(name="small", family="smollm", backend="local-gguf", model="smollm2-135m-instruct", price=PRICE)


def test_a_local_rung_is_counted_by_its_converted_tokenizer(tmp_path):
    folder = tmp_path / "smollm2-135m-instruct" / "hf"
    folder.mkdir(parents=True)
    vocab = {"[UNK]": 0, "what": 1, "is": 2, "2": 3, "+": 4, "?": 5}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    counter = TokenCounters(tmp_path).for_rung(local_rung())
    assert counter.exact and counter.name == "tokenizer of smollm2-135m-instruct"
    assert counter.count("what is 2 + 2 ?") == 6  # a word per token, as this vocabulary splits it


def test_a_local_rung_not_converted_yet_is_estimated(tmp_path):
    counter = TokenCounters(tmp_path).for_rung(local_rung())
    assert counter.name == "chars/4 (estimate)"
    assert TokenCounters(None).for_rung(local_rung()).name == "chars/4 (estimate)"


def test_a_known_provider_model_takes_the_price_maps_price():
    rung = Rung(name="mini", family="openai", backend="openai", model="gpt-4o-mini",
                base_url="https://api.openai.com/v1")
    assert (rung.price.input_per_1m, rung.price.output_per_1m) == (0.15, 0.6)
    assert rung.price_source.startswith("genai-prices ") and "openai gpt-4o-mini" in rung.price_source
    assert rung.cost(1_000_000, 1_000_000) == pytest.approx(0.75)


def test_the_catalogue_price_overrides_the_map():
    rung = Rung(name="mini", family="openai", backend="openai", model="gpt-4o-mini",
                base_url="https://api.openai.com/v1", price={"input_per_1m": 0.1, "output_per_1m": 0.2})
    assert rung.price.input_per_1m == 0.1 and rung.price_source == "catalogue"


def test_an_unknown_model_without_a_price_is_refused_naming_it(tmp_path):
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"rungs": [{"name": "mystery", "family": "x", "backend": "openai",
                                               "model": "my-finetune-7b", "base_url": "http://127.0.0.1:9/v1"}]}))
    with pytest.raises(ConfigError, match="no price: set price .* does not know model 'my-finetune-7b'"):
        load_catalogue(path)


def test_the_packaged_catalogue_names_its_prices():
    assert all(r.price_source == "catalogue" for r in load_catalogue().rungs)
