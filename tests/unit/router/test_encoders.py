"""The query encoders, and that an artefact only routes with the encoder it was trained with."""

import json

import numpy as np
import pytest

from escalon.errors import ConfigError
from escalon.registry import Catalogue, Rung
from escalon.router.artefact import LiveArtefact, load_artefact
from escalon.router import embedding
from escalon.router.embedding import (MINILM, MINILM_INT8, STATIC, MiniLMEncoder, MiniLMInt8Encoder, StaticEncoder,
                                      make_encoder, minilm_folder, require_encoder)
from escalon.offline.evaluation.evaluation import evaluate
from escalon.router.policy import RouteQuery
from escalon.router.routing import ArtefactPolicy, HybridPolicy
from escalon.offline.evaluation.synthetic import write_synthetic


def test_the_static_encoder_returns_normalised_rows_of_its_dim_and_tells_texts_apart():
    encoder = make_encoder("static")
    assert isinstance(encoder, StaticEncoder) and encoder.name == STATIC
    texts = ["What is 17 + 25?", "Write a haiku about autumn leaves.", "What is 17 + 26?", ""]
    x = encoder.encode(texts)
    assert x.dtype == np.float32 and x.shape == (4, encoder.dim) == (4, 64)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)  # the empty text too
    cos = x @ x.T
    assert cos[0, 2] > cos[0, 1]  # two sums are closer to each other than to a poem
    assert encoder.encode([]).shape == (0, 64)


def test_an_unknown_encoder_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="encoder.*minilm.*static"):
        make_encoder("word2vec")


def test_an_artefact_records_its_encoder_and_refuses_another(tmp_path):
    path = write_synthetic(tmp_path / "benchmark.parquet", n=90)
    folder = tmp_path / "artefact"
    evaluate(path, policies=["hybrid"], encoder="static", cache_dir=tmp_path / "cache", artefact_dir=folder)
    artefact = load_artefact(folder)
    assert json.loads((folder / "manifest.json").read_text())["encoder"] == STATIC == artefact.model.encoder

    # the router's policy embeds with the encoder the artefact names, so it plans without being told
    policy = ArtefactPolicy(LiveArtefact(folder))
    rungs = artefact.model.rungs
    catalogue = Catalogue(rungs=[Rung(name=r, family=f, backend="replay", model=r, benchmark=tmp_path / "unused",
                                      price={"input_per_1m": 1.0, "output_per_1m": 1.0})
                                 for r, f in zip(rungs, artefact.model.families)])
    plan = policy.plan(RouteQuery("What is 3 + 4?", 0.7), catalogue, rungs)
    assert plan.rungs and set(plan.rungs) <= set(rungs)

    # MiniLM is only named here, never loaded: the refusal comes before any embedding
    with pytest.raises(ConfigError, match=f"trained with encoder '{STATIC}'.*'{MINILM}'.*--encoder"):
        HybridPolicy(artefact.model, MiniLMEncoder(), artefact.judge_weights, artefact.probe)


# Real texts of the kinds that trip a tokenizer: empty and blank, unicode (accents, CJK, emoji), surrounding
# whitespace, and one far past the 256 tokens sentence-transformers keeps.
AWKWARD_TEXTS = ["", "  \n\t ", "What is 17 + 25?", "Écris un haïku sur l'automne — 日本語のテキスト 🚀🍂",
                 "  Write a haiku about autumn leaves.\n",
                 "Summarise the following report. "
                 + "The quarterly figures rose, then fell, then rose again across every region we track. " * 12
                 + "Meanwhile the office cat learned to open doors, chased pigeons on the roof and slept in the "
                   "server room. " * 12]  # ~465 tokens, the topic changes before token 256


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory):
    """One ONNX export for the module (~10 s), under a scratch data dir, never the user's."""
    return tmp_path_factory.mktemp("data") / "models"


@pytest.fixture(scope="module")
def sentence_transformers_vectors():
    """The reference: the package's model through sentence-transformers, as the encoder ran before onnxruntime."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_folder()), device="cpu")
    assert model.max_seq_length == 256 < len(model.tokenizer(AWKWARD_TEXTS[-1])["input_ids"])
    reference = model.encode(AWKWARD_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    # Truncating anywhere else (tokenizer.json says 128; BERT allows 512) gives a clearly different vector, so
    # the comparison below would catch it.
    for other in (128, 512):
        model.max_seq_length = other
        elsewhere = model.encode(AWKWARD_TEXTS[-1:], normalize_embeddings=True, convert_to_numpy=True)[0]
        assert float(elsewhere @ reference[-1]) < 0.95
    return reference


def test_minilm_through_onnxruntime_gives_the_sentence_transformers_vectors_one_at_a_time_and_in_batches(
        minilm_cache, sentence_transformers_vectors, monkeypatch):
    monkeypatch.setenv("ESCALON_DATA_DIR", str(minilm_cache.parent))  # the export goes to <data dir>/models
    router = make_encoder("minilm", threads=1)  # the router's encoder: one query per call, on the caller's thread
    one_by_one = np.concatenate([router.encode([t]) for t in AWKWARD_TEXTS])
    batched = MiniLMEncoder(batch_size=4, model_cache=minilm_cache).encode(AWKWARD_TEXTS)  # padded, two batches
    for x in (one_by_one, batched):
        assert x.dtype == np.float32 and x.shape == (len(AWKWARD_TEXTS), 384)
        cosine = (x * sentence_transformers_vectors).sum(axis=1)
        assert cosine.min() > 1 - 1e-5, cosine
    assert router._load()[1].get_session_options().intra_op_num_threads == 1


def test_the_fast_minilm_keeps_the_encoder_name_artefacts_were_trained_with(minilm_cache):
    encoder = MiniLMEncoder(threads=1, model_cache=minilm_cache)
    assert encoder.name == MINILM == "all-MiniLM-L6-v2" and encoder.dim == 384
    require_encoder(MINILM, encoder)  # an artefact trained before the switch still loads
    with pytest.raises(ConfigError, match="trained with encoder"):
        require_encoder(STATIC, encoder)


def test_the_onnx_export_is_made_once_and_reused_from_the_cache(minilm_cache, monkeypatch):
    MiniLMEncoder(model_cache=minilm_cache).encode(["make sure the export exists"])
    exports = list(minilm_cache.glob(f"{MINILM}/*.onnx"))
    assert len(exports) == 1 and not list(minilm_cache.glob(f"{MINILM}/.*"))  # no torn temporary left

    def no_second_export(*_):
        raise AssertionError("exported again although the cache holds the model")

    monkeypatch.setattr(embedding, "_export_onnx", no_second_export)
    assert MiniLMEncoder(threads=1, model_cache=minilm_cache).encode(["hello"]).shape == (1, 384)


def test_the_int8_minilm_is_its_own_vector_space_near_minilm_and_gives_a_text_one_vector_whatever_its_batch(
        minilm_cache, sentence_transformers_vectors):
    encoder = make_encoder("minilm-int8", threads=1)
    assert isinstance(encoder, MiniLMInt8Encoder) and encoder.name == MINILM_INT8 != MINILM
    encoder.model_cache = minilm_cache
    alone = np.concatenate([encoder.encode([t]) for t in AWKWARD_TEXTS])
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    cosine = (alone * sentence_transformers_vectors).sum(axis=1)
    assert cosine.min() > 0.95 and cosine.max() < 1 - 1e-4  # close to MiniLM, yet moved: hence another name
    # the evaluation embeds in lists, the router one query at a time: both must see the same vector
    np.testing.assert_allclose(encoder.encode(AWKWARD_TEXTS), alone, atol=1e-6)
    with pytest.raises(ConfigError, match=f"trained with encoder '{MINILM}'.*'{MINILM_INT8}'"):
        require_encoder(MINILM, encoder)
