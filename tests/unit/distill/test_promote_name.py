"""The promoted rung's default name: unique per promote job, and a valid rung name."""

import uuid

import pytest

from escalon.offline.jobs.promote import default_rung_name
from escalon.registry import Rung

pytestmark = pytest.mark.unit


def test_named_promote_jobs_get_names_of_their_own():
    first, second = default_rung_name("smollm2-135m", "promote-seed0"), default_rung_name("smollm2-135m", "promote-seed1")
    assert first == "smollm2-135m-distilled-promote-seed0" and first != second


def test_a_queue_job_id_gives_its_first_eight_hex_digits_and_every_name_is_a_valid_rung_name():
    job = uuid.uuid4().hex
    assert default_rung_name("gemma3-270m", job) == f"gemma3-270m-distilled-{job[:8]}"
    long = default_rung_name("a-very-long-base-rung-name-that-goes-on-and-on-forever", "Loop_Promote_2026-12-04T20:00")
    Rung(name=long, family="x", backend="replay", model="m", benchmark="b.parquet",
         price={"input_per_1m": 1.0, "output_per_1m": 1.0})  # the catalogue's own validation
    assert len(long) <= 63
