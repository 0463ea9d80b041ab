"""python -m escalon.judge — the judge service (gRPC, default port 50052)."""

import sys

from escalon.judge.servicer import JudgeService
from escalon.judge.settings import JudgeSettings
from escalon.main import run_service


def main(argv: list[str] | None = None) -> int:
    return run_service("escalon-judge", JudgeSettings, JudgeService, argv,
                       description="Start Escalon's judge service: scores a rung's answers with the judge panel "
                                   "(health, reflection, tracing; stops gracefully on SIGTERM).")


if __name__ == "__main__":
    sys.exit(main())
