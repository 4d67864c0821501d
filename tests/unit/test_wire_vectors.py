"""Our .proto files speak the public MQC3 wire protocol.

``tests/data/wire_vectors/`` holds messages encoded with the public stubs (see its
README). Each must parse with our generated classes into the fields its ``.txt``
shows and serialize back to the same bytes. Program payloads (``circuit`` etc.)
use SDK-owned schemas that we carry as opaque ``bytes``: for those we check every
field we do declare, and that the payload bytes come through untouched.
"""

from __future__ import annotations

import pathlib

import pytest
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from pb.mqc3_cloud.token_database.v1 import token_database_pb2

VECTOR_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "wire_vectors"
VECTOR_NAMES = sorted(path.stem for path in VECTOR_DIR.glob("*.bin"))

# Every module whose messages a vector may name; importing registers them by full name.
_PB_MODULES = (program_pb2, job_pb2, submission_pb2, execution_pb2, token_database_pb2)

# QuantumProgram's payload oneof: SDK-owned schemas, declared `bytes` on our side.
_PAYLOAD_ONEOF = "payload"
_PAYLOAD_FIELDS = ("circuit", "graph", "machinery")
_PROGRAM_TYPE = program_pb2.QuantumProgram.DESCRIPTOR.full_name


def _load_vector(name: str) -> tuple[type[Message], bytes, str]:
    """Return the vector's message class, its encoding and its text-format body."""
    header, _, body = (VECTOR_DIR / f"{name}.txt").read_text(encoding="utf-8").partition("\n")
    assert header.startswith("# "), f"{name}.txt must start with '# <message full name>'"
    descriptor = descriptor_pool.Default().FindMessageTypeByName(header.removeprefix("# ").strip())
    encoded = (VECTOR_DIR / f"{name}.bin").read_bytes()
    return message_factory.GetMessageClass(descriptor), encoded, body


def _strip_payload_blocks(body: str) -> tuple[str, list[str]]:
    """Drop ``circuit { ... }``-style blocks from text format; return the rest and their names."""
    kept: list[str] = []
    stripped: list[str] = []
    depth = 0
    for line in body.splitlines():
        token = line.strip()
        if depth:
            if token.endswith("{"):
                depth += 1
            elif token == "}":
                depth -= 1
            continue
        if token.endswith(" {") and token.removesuffix(" {") in _PAYLOAD_FIELDS:
            stripped.append(token.removesuffix(" {"))
            depth = 1
            continue
        kept.append(line)
    assert depth == 0, "unbalanced braces in text format"
    return "\n".join(kept), stripped


def _children(message: Message) -> list[Message]:
    children: list[Message] = []
    for field, value in message.ListFields():
        if field.message_type is not None:
            children.extend([value] if isinstance(value, Message) else value)
    return children


def _take_payloads(message: Message) -> list[tuple[str, bytes]]:
    """Clear every QuantumProgram payload inside ``message``; return (field, bytes) pairs."""
    if message.DESCRIPTOR.full_name == _PROGRAM_TYPE:
        which = message.WhichOneof(_PAYLOAD_ONEOF)
        if which is None:
            return []
        payload: bytes = getattr(message, which)
        message.ClearField(which)
        return [(which, payload)]
    return [taken for child in _children(message) for taken in _take_payloads(child)]


def _unknown_field_paths(message: Message, path: str = "") -> list[str]:
    """Paths of (sub)messages holding fields our schema does not declare."""
    here = [path or "<root>"] if len(UnknownFieldSet(message)) else []
    nested = [
        unknown
        for field, value in message.ListFields()
        if field.message_type is not None
        for index, child in enumerate([value] if isinstance(value, Message) else value)
        for unknown in _unknown_field_paths(child, f"{path}.{field.name}[{index}]")
    ]
    return here + nested


def _readme_table() -> dict[str, tuple[str, int]]:
    """Rows of the README's vector table: file name -> (message full name, size in bytes)."""
    rows: dict[str, tuple[str, int]] = {}
    for line in (VECTOR_DIR / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].isdigit():
            rows[cells[0]] = (cells[1], int(cells[2]))
    return rows


def test_vectors_match_readme_table() -> None:
    table = _readme_table()

    assert sorted(table) == VECTOR_NAMES
    for name, (full_name, size) in table.items():
        message_class, encoded, _ = _load_vector(name)
        assert message_class.DESCRIPTOR.full_name == full_name
        assert len(encoded) == size


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_reserializes_to_same_bytes(name: str) -> None:
    message_class, encoded, _ = _load_vector(name)

    assert message_class.FromString(encoded).SerializeToString() == encoded


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_uses_only_declared_fields(name: str) -> None:
    # A field missing from our schema, or declared with another wire type, would
    # still round-trip as an unknown field; this is what catches it.
    message_class, encoded, _ = _load_vector(name)

    assert _unknown_field_paths(message_class.FromString(encoded)) == []


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_fields_match_text(name: str) -> None:
    message_class, encoded, body = _load_vector(name)
    expected_text, payload_blocks = _strip_payload_blocks(body)
    message = message_class.FromString(encoded)

    payloads = _take_payloads(message)
    expected = text_format.Parse(expected_text, message_class())

    assert [field for field, _ in payloads] == payload_blocks
    assert all(payload for _, payload in payloads)
    assert text_format.MessageToString(message) == text_format.MessageToString(expected)
    assert message == expected


def test_submit_job_request_declared_fields() -> None:
    message_class, encoded, _ = _load_vector("submit_job_request")
    request = message_class.FromString(encoded)
    assert isinstance(request, submission_pb2.SubmitJobRequest)

    assert request.token == "tok-abc"
    assert request.options.save_job is True
    assert request.sdk_version == "1.0.0"
    assert request.job.program.format == program_pb2.REPRESENTATION_FORMAT_CIRCUIT
    assert request.job.program.WhichOneof(_PAYLOAD_ONEOF) == "circuit"
    settings = request.job.settings
    assert settings.backend == "emulator"
    assert settings.n_shots == 1024
    assert settings.timeout.seconds == 180
    assert settings.state_save_policy == job_pb2.JOB_STATE_SAVE_POLICY_FIRST_ONLY
    # `float` on the wire (fixed32): 10.5 is exact in single precision.
    assert settings.resource_squeezing_level == 10.5
    assert settings.role == "developer"


def test_program_reaches_backend_byte_for_byte() -> None:
    program_bytes = (VECTOR_DIR / "quantum_program.bin").read_bytes()
    program = program_pb2.QuantumProgram.FromString(program_bytes)
    submit = submission_pb2.SubmitJobRequest.FromString(
        (VECTOR_DIR / "submit_job_request.bin").read_bytes()
    )
    assign = execution_pb2.AssignNextJobResponse.FromString(
        (VECTOR_DIR / "assign_next_job_response.bin").read_bytes()
    )

    assert submit.job.program.SerializeToString() == program_bytes
    assert assign.job.program.SerializeToString() == program_bytes
    assert assign.job.program.circuit == program.circuit


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    if wire_type == 2:
        body = _varint(len(body)) + body
    return _varint(number << 3 | wire_type) + body


_NESTED_UNKNOWN = (
    _field(1, 0, _varint(7))
    + _field(999, 2, _field(5, 2, _field(123456, 1, b"\x01" * 8) + _field(2, 5, b"\x02" * 4)))
    + _field(536_870_911, 0, _varint(2**63))
)
_OPAQUE_PAYLOADS = {
    "nested-unknown-fields": _NESTED_UNKNOWN,
    # A schema-aware parser would keep only the last value and reorder fields.
    "out-of-order-repeated-scalar": b"".join(
        [_field(3, 0, b"\x01"), _field(1, 0, b"\x02"), _field(3, 0, b"\x09")]
    ),
    # Overlong varint for 1: a schema-aware round trip would shorten it.
    "non-canonical-varint": _varint(1 << 3) + b"\x81\x80\x00",
    "not-protobuf-at-all": b"\xff\xfe\x00 opaque",
    "empty": b"",
}
_FORMATS = {
    "circuit": program_pb2.REPRESENTATION_FORMAT_CIRCUIT,
    "graph": program_pb2.REPRESENTATION_FORMAT_GRAPH,
    "machinery": program_pb2.REPRESENTATION_FORMAT_MACHINERY,
}


@pytest.mark.parametrize("payload_field", sorted(_FORMATS))
@pytest.mark.parametrize("payload", _OPAQUE_PAYLOADS.values(), ids=_OPAQUE_PAYLOADS.keys())
def test_opaque_payload_passes_through_scheduler(payload_field: str, payload: bytes) -> None:
    program = program_pb2.QuantumProgram(format=_FORMATS[payload_field], **{payload_field: payload})
    submitted = submission_pb2.SubmitJobRequest(
        token="tok-abc",
        job=job_pb2.Job(
            program=program,
            settings=job_pb2.JobExecutionSettings(backend="emulator", n_shots=8),
        ),
        sdk_version="1.0.0",
    ).SerializeToString()

    # The scheduler's path: accept the request, store the job, hand it to a node.
    stored = submission_pb2.SubmitJobRequest.FromString(submitted).job.SerializeToString()
    job = job_pb2.Job.FromString(stored)
    job.settings.role = "developer"
    handed_out = execution_pb2.AssignNextJobResponse(job_id="job-1", job=job).SerializeToString()
    received = execution_pb2.AssignNextJobResponse.FromString(handed_out).job.program

    assert received.WhichOneof(_PAYLOAD_ONEOF) == payload_field
    assert getattr(received, payload_field) == payload
    assert received.SerializeToString() == program.SerializeToString()
    assert program.SerializeToString() in handed_out
