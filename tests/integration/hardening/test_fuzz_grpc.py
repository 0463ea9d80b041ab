"""Fuzzing every RPC of every Escalon gRPC service with hypothesis, against real servers (stack.py).

Each RPC gets requests built from its own descriptor (random, empty and 10-200 KB strings, names the services
know, NaN / ±inf / huge numbers, unknown enum values, nested messages and Structs) and raw bytes that are not
its message (random bytes, valid encodings cut or corrupted, invalid UTF-8 in a string field); some calls carry
a 1 ms deadline. A call passes when it ends OK or with one of the codes a caller can act on, always with a
message — never INTERNAL, UNKNOWN, or a code the contract does not name. Afterwards every service still says
SERVING, the logs hold no traceback, and undecodable requests were logged at most once per server and
client. The figures (requests tried, status histogram per service) are printed at the end (`-s` shows them)
and written to $ESCALON_FUZZ_REPORT when set.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from escalon.gen.common.v1.common_pb2 import AnswerType
from escalon.gen.distill.v1 import distill_pb2
from escalon.gen.judge.v1 import judge_pb2
from escalon.gen.router.v1 import router_pb2
from escalon.gen.serving.v1 import serving_pb2
from escalon.offline.stack import DEMO_PROMPT
from tests.integration.hardening.stack import services_in_a_thread

pytestmark = [
    pytest.mark.integration,
    # the servers run in a thread beside hypothesis: their own use of `random` is not the strategies'
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

# What a caller may see. NOT_FOUND and ALREADY_EXISTS are distill's answers about job ids (its contract).
ALLOWED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "UNAUTHENTICATED",
           "NOT_FOUND", "ALREADY_EXISTS"}
SERVICES = {"router": router_pb2, "judge": judge_pb2, "serving": serving_pb2, "distill": distill_pb2}
EXAMPLES = int(os.environ.get("ESCALON_FUZZ_EXAMPLES", "40"))  # per RPC and kind; 40 keeps CI at ~20 s
KNOWN_TEXT = ["gpt-4", "mixtral-8x7b", "economy", "balanced", "max-quality", "profile", "harvest", "undo",
              "promote", "cpu", "gpu", "agreement", "execution", "p_true", "benchmark", "synthetic:arith",
              "/etc/passwd", "../../../../etc/shadow", "demo/gsm8k-sample.parquet", DEMO_PROMPT, "What is 2+2?",
              "def f(x):\n    return x\n", "import os; os.fork()", "\x00", "😀" * 20, "a" * 81]


def _rpcs() -> list[tuple[str, pb_descriptor.MethodDescriptor]]:
    return [(name, method) for name, module in SERVICES.items()
            for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods]


RPCS = _rpcs()


def _path(method: pb_descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


# ---- strategies ----------------------------------------------------------------------------------------------

huge_text = st.builds(lambda n, c: c * n, st.integers(10_000, 200_000), st.sampled_from(["x", "é", "\x00", "9 "]))
texts = st.one_of(st.just(""), st.text(max_size=40), st.sampled_from(KNOWN_TEXT), huge_text)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0, 0.5, 1.0, -1.0]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), floats, st.integers(-2**53, 2**53), texts),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12)
_INTS = {
    pb_descriptor.FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), pb_descriptor.FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), pb_descriptor.FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), pb_descriptor.FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), pb_descriptor.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), pb_descriptor.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


tame_texts = st.sampled_from([t for t in KNOWN_TEXT if len(t) < 300 and "\x00" not in t])
tame_floats = st.sampled_from([0.0, 0.0005, 0.01, 0.5, 0.9, 1.0])
# Good values by field name, so tame requests get past the first check more often than not.
TAME_BY_NAME = {
    "prompt": [DEMO_PROMPT, "What is 2+2?", "def add(a, b):"], "operating_point": ["", "economy", "max-quality"],
    "pin_rung": ["", "gpt-4", "mixtral-8x7b"], "rung": ["gpt-4", "mixtral-8x7b"], "judge_rung": [""],
    "judges": ["agreement", "cross_model", "format"], "kind": ["profile", "harvest"], "queue": ["", "cpu"],
    "job_id": ["", "job-1", "fuzz-2"], "task": ["", "gsm8k"], "stop": ["\n"], "page_token": [""],
    "text": ["8", "The answer is 8.", "42"], "family": ["openai", "mistral"], "request_id": ["", "r1"],
}


def _tame(field: pb_descriptor.FieldDescriptor) -> st.SearchStrategy:
    """Values a well-meaning caller sends: the requests get past validation and into the real work."""
    t = field.type
    if t == field.TYPE_STRING:
        return st.sampled_from(TAME_BY_NAME[field.name]) if field.name in TAME_BY_NAME else tame_texts
    if t in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return tame_floats
    if t == field.TYPE_BOOL:
        return st.booleans()
    if t == field.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if t == field.TYPE_BYTES:
        return st.binary(max_size=8)
    return st.integers(0, 8)


def _scalar(field: pb_descriptor.FieldDescriptor, tame: bool = False) -> st.SearchStrategy:
    if tame:
        return _tame(field)
    t = field.type
    if t == field.TYPE_STRING:
        return texts
    if t == field.TYPE_BYTES:
        return st.binary(max_size=64)
    if t in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return floats if t == field.TYPE_DOUBLE else st.floats(width=32, allow_nan=True, allow_infinity=True)
    if t == field.TYPE_BOOL:
        return st.booleans()
    if t == field.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 60), st.integers(-2**31, 2**31 - 1))
    low, high = _INTS[t]
    small = st.integers(max(low, -5), min(high, 200))
    return st.one_of(small, st.integers(low, high), st.sampled_from([low, high]))


@st.composite
def messages(draw, descriptor: pb_descriptor.Descriptor, depth: int = 0, tame: bool = False):
    """A message of this type with a random subset of its fields set to hostile or ordinary values (`tame`:
    ordinary ones only)."""
    cls = message_factory.GetMessageClass(descriptor)
    msg = cls()
    if descriptor.full_name == "google.protobuf.Struct":
        msg.update(draw(st.dictionaries(tame_texts if tame else texts, json_values, max_size=6)))
        return msg
    if descriptor.full_name in ("google.protobuf.Value", "google.protobuf.ListValue"):
        holder = struct_pb2.Struct()
        holder.update({"v": draw(json_values)})
        value = holder.fields["v"]
        return value.list_value if descriptor.full_name == "google.protobuf.ListValue" else value
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        is_message = field.type == field.TYPE_MESSAGE
        if is_message and depth >= 3:
            continue
        if field.is_repeated:
            if is_message and field.message_type.GetOptions().map_entry:
                continue  # no map fields in the requests (Struct is handled above)
            items = draw(st.lists(messages(field.message_type, depth + 1, tame) if is_message
                                  else _scalar(field, tame), max_size=4))
            getattr(msg, field.name).extend(items)
        elif is_message:
            getattr(msg, field.name).CopyFrom(draw(messages(field.message_type, depth + 1, tame)))
        else:
            setattr(msg, field.name, draw(_scalar(field, tame)))
    return msg


@st.composite
def plausible(draw, descriptor: pb_descriptor.Descriptor):
    """An ordinary request with one hostile value in one of its scalar fields (a NaN budget in an otherwise
    good Route, a 200 KB rung name in a good Generate): what gets past the obvious checks."""
    msg = draw(messages(descriptor, tame=True))
    target, scalars = msg, [f for f in descriptor.fields if f.type != f.TYPE_MESSAGE and not f.is_repeated]
    nested = [f for f in descriptor.fields if f.type == f.TYPE_MESSAGE and not f.is_repeated
              and not f.message_type.full_name.startswith("google.protobuf")]
    if not scalars and nested:  # RouteStreamRequest, GenerateStreamRequest: the request is one level down
        field = nested[0]
        target = getattr(msg, field.name)
        target.CopyFrom(draw(messages(field.message_type, tame=True)))
        scalars = [f for f in field.message_type.fields if f.type != f.TYPE_MESSAGE and not f.is_repeated]
    if scalars:
        field = draw(st.sampled_from(scalars))
        setattr(target, field.name, draw(_scalar(field)))
    return msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def raw_bytes(draw, descriptor: pb_descriptor.Descriptor):
    """Bytes that are not a valid message of this type, or merely odd: random, cut, corrupted, bad UTF-8."""
    kind = draw(st.sampled_from(["random", "cut", "flip", "bad-utf8", "bad-utf8-nested"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=256))
    valid = draw(messages(descriptor)).SerializeToString()
    if kind == "cut" and len(valid) > 1:
        return valid[:draw(st.integers(1, len(valid) - 1))]
    if kind == "flip" and valid:
        i = draw(st.integers(0, len(valid) - 1))
        return valid[:i] + bytes([valid[i] ^ draw(st.integers(1, 255))]) + valid[i + 1:]
    strings = [f for f in descriptor.fields if f.type == f.TYPE_STRING and not f.is_repeated]
    nested = [f for f in descriptor.fields if f.type == f.TYPE_MESSAGE and not f.is_repeated]
    bad = draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"ok\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
    if kind == "bad-utf8-nested" and nested:
        inner_strings = [f for f in nested[0].message_type.fields if f.type == f.TYPE_STRING]
        if inner_strings:
            inner = _varint(inner_strings[0].number << 3 | 2) + _varint(len(bad)) + bad
            return valid + _varint(nested[0].number << 3 | 2) + _varint(len(inner)) + inner
    if strings:
        field = draw(st.sampled_from(strings))
        return valid + _varint(field.number << 3 | 2) + _varint(len(bad)) + bad
    return valid + b"\x0a\xff"  # a length that runs past the end


# ---- the calls ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with services_in_a_thread(tmp_path_factory.mktemp("fuzz")) as services:
        channels = {name: grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
                    for name, address in services.addresses.items()}
        services.channels = channels
        services.tally = defaultdict(Counter)
        services.failures = []
        yield services
        for channel in channels.values():
            channel.close()


def _call(stack, service: str, method: pb_descriptor.MethodDescriptor, payload: bytes, timeout: float) -> None:
    channel = stack.channels[service]
    if method.server_streaming:
        call = channel.unary_stream(_path(method), request_serializer=None, response_deserializer=None)
    else:
        call = channel.unary_unary(_path(method), request_serializer=None, response_deserializer=None)
    if method.name == "WatchJob":
        timeout = min(timeout, 0.3)  # a queued job's watch never ends on its own
    code, details = "OK", ""
    try:
        result = call(payload, timeout=timeout)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    stack.tally[service][code] += 1
    if code not in ALLOWED or (code != "OK" and not details.strip()):
        stack.failures.append((service, method.name, code, details[:300], payload[:200]))
    elif code == "OK" and method.name == "Route" and (broken := _over_budget(payload, result)):
        stack.failures.append((service, method.name, code, broken, payload[:200]))


def _over_budget(payload: bytes, reply: bytes) -> str:
    """A Route answered OK never spends more than the budget it was given (NaN used to switch it off)."""
    request, response = router_pb2.RouteRequest.FromString(payload), router_pb2.RouteResponse.FromString(reply)
    if request.HasField("max_cost_usd") and not response.total_cost_usd <= request.max_cost_usd:
        return f"spent {response.total_cost_usd} on a budget of {request.max_cost_usd}"
    return ""


def _deadline(draw) -> float:
    return 0.001 if draw(st.integers(0, 19)) == 0 else 20.0  # one call in 20 with a 1 ms deadline


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m.name}" for s, m in RPCS])
@FUZZ
@given(data=st.data())
def test_random_messages_get_a_status_a_caller_can_act_on(stack, service, method, data):
    message = data.draw(messages(method.input_type))
    _call(stack, service, method, message.SerializeToString(), _deadline(data.draw))
    assert not stack.failures, stack.failures[:5]


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m.name}" for s, m in RPCS])
@FUZZ
@given(data=st.data())
def test_good_requests_with_one_hostile_value_get_a_status_a_caller_can_act_on(stack, service, method, data):
    message = data.draw(plausible(method.input_type))
    _call(stack, service, method, message.SerializeToString(), _deadline(data.draw))
    assert not stack.failures, stack.failures[:5]


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m.name}" for s, m in RPCS])
@FUZZ
@given(data=st.data())
def test_bytes_that_are_not_the_message_are_invalid_argument(stack, service, method, data):
    payload = data.draw(raw_bytes(method.input_type))
    _call(stack, service, method, payload, _deadline(data.draw))
    assert not stack.failures, stack.failures[:5]


@FUZZ
@given(budget=floats, quality=st.one_of(st.none(), floats), point=st.sampled_from(["", "economy", "max-quality"]))
def test_a_route_never_spends_more_than_its_budget(stack, budget, quality, point):
    """The budget as a property: any float (NaN, ±inf, subnormal, huge) is refused or never exceeded."""
    request = router_pb2.RouteRequest(prompt=DEMO_PROMPT, answer_type=AnswerType.ANSWER_TYPE_NUMBER,
                                      max_cost_usd=budget, operating_point=point)
    if quality is not None:
        request.min_quality = quality
    _call(stack, "router", router_pb2.DESCRIPTOR.services_by_name["RouterService"].methods_by_name["Route"],
          request.SerializeToString(), 20.0)
    assert not stack.failures, stack.failures[:5]


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_message_over_the_size_limit_is_resource_exhausted(stack, service):
    method = next(m for s, m in RPCS if s == service)
    body = b"\x0a" + _varint(17 << 20) + b"x" * (17 << 20)  # field 1, 17 MB: over MAX_MESSAGE_BYTES (16 MB)
    call = stack.channels[service].unary_unary(_path(method), request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        call(body, timeout=30)
    stack.tally[service][caught.value.code().name] += 1
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()


def test_afterwards_every_service_is_serving_and_the_logs_are_quiet(stack):
    assert stack.healthy() == dict.fromkeys(stack.addresses, "SERVING")
    records = stack.logs.records
    tracebacks = [r for r in records if r.exc_info and r.levelno >= 30]
    assert not tracebacks, [f"{r.name}: {r.getMessage()}: {r.exc_info[0].__name__}: {r.exc_info[1]}" for r in tracebacks[:4]]
    decode_lines = [r.getMessage() for r in records if r.getMessage().startswith("undecodable ")]
    # at most one line per server and client address per minute ("unknown": calls whose deadline had passed)
    per_client = Counter((line.split()[1].split("/")[1], line.split(" request from ")[1].split()[0])
                         for line in decode_lines)
    minutes = 1 + int((time.monotonic() - START) // 60)
    assert decode_lines and all(n <= minutes for n in per_client.values()), per_client
    figures = {service: dict(counts.most_common()) for service, counts in stack.tally.items()}
    figures["total"] = sum(sum(c.values()) for c in stack.tally.values())
    figures["log_records"] = len(records)
    print("\nfuzzed requests per service and status:", json.dumps(figures, indent=1))
    if os.environ.get("ESCALON_FUZZ_REPORT"):
        with open(os.environ["ESCALON_FUZZ_REPORT"], "w") as fh:
            json.dump(figures, fh, indent=1)
    assert figures["total"] > 0


START = time.monotonic()
