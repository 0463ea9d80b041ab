"""python -m escalon.judge — the judge service (gRPC, default port 50052)."""

from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.main import run_service

if __name__ == "__main__":
    run_service("escalon-judge", JudgeSettings, JudgeService)
