"""The query encoders, and that an artefact only routes with the encoder it was trained with."""

import json

import numpy as np
import pytest

from escalon.errors import ConfigError
from escalon.registry import Catalogue, Rung
from escalon.router.artefact import LiveArtefact, load_artefact
from escalon.router.embedding import MINILM, STATIC, MiniLMEncoder, StaticEncoder, make_encoder
from escalon.router.evaluation import evaluate
from escalon.router.policy import RouteQuery
from escalon.router.routing import ArtefactPolicy, HybridPolicy
from escalon.router.synthetic import write_synthetic


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
