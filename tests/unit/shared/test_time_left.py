"""escalon.grpc.time_left: what remains of the deadline of the call being handled, in its tasks too."""

import asyncio

import pytest

from escalon.grpc import _track_deadline, time_left

pytestmark = pytest.mark.unit


class _Context:
    def __init__(self, remaining):
        self.remaining = remaining

    def time_remaining(self):
        return self.remaining


async def test_a_call_made_for_a_handled_call_gets_at_most_its_remaining_deadline():
    async def handler(remaining):
        _track_deadline(_Context(remaining))
        child = asyncio.create_task(asyncio.sleep(0, result=time_left(30.0)))  # a task it starts inherits it
        return time_left(30.0), time_left(0.5), await child

    mine, capped, inherited = await asyncio.create_task(handler(2.0))
    assert 1.9 < mine <= 2.0 and capped == 0.5 and 1.9 < inherited <= 2.0
    assert await asyncio.create_task(handler(None)) == (30.0, 0.5, 30.0)  # no deadline: the limit
    assert time_left(30.0) == 30.0  # outside any handled call
    passed = await asyncio.create_task(handler(-1.0))
    assert passed[0] == 0.0  # a passed deadline: the next call fails at once
