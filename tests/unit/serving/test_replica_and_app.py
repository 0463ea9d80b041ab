"""The replica (what a Serve deployment runs), the Serve application builder, settings, and the entry point."""

from __future__ import annotations

import asyncio
import contextvars

import pandas as pd
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from escalon.config import load_settings
from escalon.errors import ConfigError
from escalon.serving.__main__ import main
from escalon.serving.app import build_app
from escalon.backends import GenerateParams
from escalon.serving.deployment import RungReplica, deployment_options
from escalon.serving.settings import ServingSettings
from escalon.telemetry import ATTR_RUNG, configure_telemetry
from servingkit import DEMO_BENCHMARK, MIXTRAL, replay_rung, smollm_rung

pytestmark = pytest.mark.unit


async def test_the_replica_continues_the_callers_trace_from_the_carrier(tmp_path):
    """The carrier is all a replica in another process gets; its span must join the caller's trace."""
    exporter = InMemorySpanExporter()
    configure_telemetry("escalon-tests").provider.add_span_processor(SimpleSpanProcessor(exporter))
    replica = RungReplica(replay_rung(), tmp_path)
    parent = trace.SpanContext(trace_id=0x1234ABCD << 64, span_id=0x5678EF, is_remote=True,
                               trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    table = pd.read_parquet(DEMO_BENCHMARK)
    prompt = table[table["model"] == MIXTRAL].prompt.iloc[0]

    # A fresh context, as in a replica's process: nothing but the carrier links it to the caller.
    async def call():
        return await replica.generate(GenerateParams(prompt=prompt, max_tokens=8), carrier)

    await asyncio.create_task(call(), context=contextvars.Context())
    span = next(s for s in exporter.get_finished_spans() if s.name == "escalon.serving.replica/Generate")
    assert span.context.trace_id == parent.trace_id and span.parent.span_id == parent.span_id
    assert span.attributes[ATTR_RUNG] == "mixtral-8x7b"


def test_a_tier_deploys_with_its_catalogue_autoscaling_and_resources():
    rung = smollm_rung(autoscaling={"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4},
                       resources={"num_cpus": 0.5, "num_gpus": 1})
    options = deployment_options(rung)
    assert options["name"] == "smollm2-135m"
    assert options["autoscaling_config"] == {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 3,
                                             "target_ongoing_requests": 4}
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1}
    assert options["max_ongoing_requests"] == 8


def test_build_app_binds_the_named_rung_and_rejects_bad_args(tmp_path):
    from ray.serve import Application

    assert isinstance(build_app({"rung": "gpt-4", "model_cache": str(tmp_path)}), Application)
    with pytest.raises(ConfigError, match="unknown rung 'gpt-9'; known rungs: smollm2-135m"):
        build_app({"rung": "gpt-9"})
    with pytest.raises(ConfigError, match="build_app args invalid — rung: Field required; model: Extra inputs"):
        build_app({"model": "x"})


def test_settings_read_rung_lists_and_keep_ray_socket_paths_short(tmp_path, monkeypatch):
    monkeypatch.setenv("ESCALON_SERVING_RUNGS", "smollm2-135m, gpt-4")
    monkeypatch.setenv("ESCALON_MODEL_CACHE", str(tmp_path / "shared-models"))
    settings = load_settings(ServingSettings, data_dir=tmp_path / ("deep" * 20))
    assert settings.rungs == ["smollm2-135m", "gpt-4"] and settings.port == 50053
    assert settings.models_dir == tmp_path / "shared-models"
    assert len(str(settings.ray_session_dir)) <= 40 and settings.ray_session_dir.name.startswith("escalon-ray-")
    assert load_settings(ServingSettings, data_dir="/srv/e").ray_session_dir.as_posix() == "/srv/e/ray"


def test_the_entry_point_explains_its_environment_and_fails_bad_config_in_one_line(monkeypatch, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "ESCALON_SERVING_RUNTIME" in capsys.readouterr().out
    monkeypatch.setenv("ESCALON_SERVING_RUNTIME", "kubernetes")
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("escalon-serving: invalid ServingSettings configuration — "
                                               "ESCALON_SERVING_RUNTIME: Input should be 'ray' or 'inprocess'")


async def test_check_health_passes_while_the_engine_answers_and_raises_once_it_is_gone(tmp_path):
    replica = RungReplica(replay_rung(), tmp_path)
    await replica.check_health()
    await replica.close()
    with pytest.raises(RuntimeError, match="is not loaded"):
        await replica.check_health()
