"""The router's gRPC clients: how a downstream status becomes one of the router's own errors."""

import pytest

pytestmark = pytest.mark.unit


def test_a_shed_downstream_call_becomes_overloaded_with_its_hint():
    import grpc
    from grpc.aio import AioRpcError, Metadata

    from escalon.errors import Overloaded
    from escalon.router.clients import _domain_error

    shed = AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, Metadata(), Metadata(("retry-after-ms", "300")),
                       "overloaded: escalon-serving is handling 64 calls")
    got = _domain_error(shed, "rung mid")
    assert isinstance(got, Overloaded) and got.retry_after_ms == 300
    assert str(got) == "overloaded: escalon-serving is handling 64 calls (rung mid)"
    budget = AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, Metadata(), Metadata(), "max_cost_usd: too low")
    assert not isinstance(_domain_error(budget, "rung mid"), Overloaded)
