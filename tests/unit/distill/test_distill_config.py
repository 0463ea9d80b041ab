"""Settings and the Celery app: defaults under the data dir, per-broker options, no I/O at build time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kombu.transport.sqlalchemy
import pytest

from escalon.config import load_settings
from escalon.distill.celery_app import TASK_NAME, create_celery
from escalon.distill.settings import DistillSettings
from escalon.errors import ConfigError

pytestmark = pytest.mark.unit


def test_the_data_dir_alone_relocates_everything(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ESCALON_DATA_DIR", str(tmp_path))
    s = load_settings(DistillSettings)
    assert s.port == 50054
    assert s.broker_url == f"sqla+sqlite:///{tmp_path}/broker.sqlite"
    assert s.result_backend == f"db+sqlite:///{tmp_path}/results.sqlite"
    assert s.database_url == f"sqlite:///{tmp_path}/jobs.sqlite"
    assert s.jobs_dir == tmp_path / "jobs" and s.broker_kind == "sqlalchemy"


def test_servers_when_configured(monkeypatch) -> None:
    monkeypatch.setenv("ESCALON_DISTILL_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("ESCALON_DISTILL_DATABASE_URL", "postgresql://escalon@db/escalon")
    monkeypatch.setenv("ESCALON_DISTILL_RESULT_BACKEND", "db+postgresql://escalon@db/escalon")
    s = load_settings(DistillSettings)
    assert s.broker_kind == "amqp"
    assert s.database_url == "postgresql+psycopg://escalon@db/escalon"  # psycopg 3, the driver Escalon ships
    assert s.result_backend == "db+postgresql+psycopg://escalon@db/escalon"


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("ESCALON_DISTILL_BROKER_URL", "kafka://k:9092", "unsupported broker URL scheme"),
        ("ESCALON_DISTILL_DATABASE_URL", "mysql://x", "the job store must be sqlite"),
        ("ESCALON_DISTILL_LEASE_S", "0", "greater than 0"),
    ],
)
def test_bad_settings_are_one_clear_error(monkeypatch, env, value, words) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=words) as err:
        load_settings(DistillSettings)
    assert env in str(err.value)


def test_the_cli_reports_a_config_error_in_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ESCALON_DATA_DIR": str(tmp_path), "ESCALON_DISTILL_BROKER_URL": "kafka://k"}
    for args in ([], ["worker"]):
        proc = subprocess.run(
            [sys.executable, "-m", "escalon.distill", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "ESCALON_DISTILL_BROKER_URL" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "escalon.distill", "worker", "--queues", "tpu"],
        env={**env, "ESCALON_DISTILL_BROKER_URL": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--queues" in proc.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "escalon.distill", "--help"], capture_output=True, text=True, timeout=60
    )
    for name in (
        "ESCALON_DATA_DIR",
        "ESCALON_DISTILL_BROKER_URL",
        "ESCALON_DISTILL_DATABASE_URL",
        "ESCALON_DISTILL_LEASE_S",
        "ESCALON_DISTILL_VISIBILITY_TIMEOUT_S",
    ):
        assert name in helped.stdout


def test_celery_app_delivery_settings_and_no_io(tmp_path: Path) -> None:
    app = create_celery(DistillSettings(ESCALON_DATA_DIR=str(tmp_path / "data"), broker_polling_interval_s=0.05))
    conf = app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (True, True, 1)
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert sorted(q.name for q in conf.task_queues) == ["cpu", "gpu"]
    assert TASK_NAME in app.tasks
    assert kombu.transport.sqlalchemy.Transport.polling_interval == 0.05  # FEASIBILITY.md's workaround
    assert "polling_interval" not in conf.broker_transport_options  # it would reach create_engine
    assert conf.worker_enable_remote_control is False  # the SQLite transport has no fanout
    assert not (tmp_path / "data").exists()  # built, connected to nothing


def test_per_broker_transport_options(tmp_path: Path) -> None:
    redis = create_celery(
        DistillSettings(ESCALON_DATA_DIR=str(tmp_path), broker_url="redis://h:6379/0", visibility_timeout_s=7200)
    )
    assert redis.conf.broker_transport_options == {"visibility_timeout": 7200}
    assert redis.conf.worker_enable_remote_control is True
    amqp = create_celery(DistillSettings(ESCALON_DATA_DIR=str(tmp_path), broker_url="amqp://h//"))
    assert amqp.conf.broker_transport_options == {"confirm_publish": True}


def test_celery_dash_a_finds_a_lazily_built_app(tmp_path: Path) -> None:
    code = (
        "import escalon.distill.celery_app as m, os; a = m.app; "
        "print(type(a).__name__, a.conf.broker_url, os.path.exists(os.environ['ESCALON_DATA_DIR']))"
    )
    env = {"ESCALON_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.split() == ["DistillCelery", f"sqla+sqlite:///{tmp_path}/d/broker.sqlite", "False"]
