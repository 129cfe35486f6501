"""``multipart/form-data`` bodies (RFC 7578), parsed strictly from the bytes
:class:`~nas_service.api.middleware.BodySizeLimit` already bounded and buffered.

The service takes one kind of form, dataset uploads: a few text fields and a few files. A
malformed body (no boundary, a part without headers, no closing delimiter, a field sent twice)
is a 400 problem naming the part; nothing here allocates more than the body itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

from .errors import Problem, field_error

MAX_PARTS = 64
MAX_FIELD_BYTES = 4096


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # (field, filename, data)


def _header_params(value: str, header: str) -> Message:
    message = Message()
    message[header] = value
    return message


def _malformed(detail: str, location: str = "/body") -> Problem:
    return Problem(400, f"the multipart body is malformed: {detail}", slug="malformed-body",
                   title="Malformed multipart body", errors=[field_error(location, detail)])


def parse_form(body: bytes, content_type: str | None) -> Form:
    """The fields and files of a ``multipart/form-data`` body; a 415 problem for another
    content type, 400 for a malformed body."""
    message = _header_params(content_type or "", "content-type")
    if message.get_content_type() != "multipart/form-data":
        raise Problem(415, "upload the dataset as multipart/form-data (a 'name' field and one "
                      "or more 'files')", slug="unsupported-media-type",
                      title="Unsupported media type")
    boundary = message.get_param("boundary", header="content-type")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise _malformed("the content type names no boundary (1 to 70 characters)")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    start = body.find(delimiter)
    if start < 0:
        raise _malformed("the body holds no boundary delimiter")
    pos = start + len(delimiter)
    form = Form()
    index = 0
    while True:
        if body[pos:pos + 2] == b"--":
            return form
        if body[pos:pos + 2] != b"\r\n":
            raise _malformed(f"part {index}: a delimiter must end with CRLF")
        end = body.find(b"\r\n" + delimiter, pos + 2)
        if end < 0:
            raise _malformed(f"part {index} is not closed by a boundary delimiter "
                             "(a truncated upload?)")
        _add_part(form, memoryview(body)[pos + 2:end], index)
        pos = end + 2 + len(delimiter)
        index += 1
        if index > MAX_PARTS:
            raise _malformed(f"more than {MAX_PARTS} parts")


def _add_part(form: Form, part: memoryview, index: int) -> None:
    raw = bytes(part[:16384])
    split = raw.find(b"\r\n\r\n")
    if split < 0:
        raise _malformed(f"part {index} has no header block")
    headers = raw[:split].decode("utf-8", "replace").split("\r\n")
    disposition = next((h.split(":", 1)[1].strip() for h in headers
                        if h.lower().startswith("content-disposition:")), None)
    if disposition is None:
        raise _malformed(f"part {index} has no Content-Disposition header")
    message = _header_params(disposition, "content-disposition")
    name = message.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise _malformed(f"part {index} has no field name")
    filename = message.get_filename()
    content = part[split + 4:]
    if filename is not None:
        form.files.append((name, filename, bytes(content)))
        return
    if len(content) > MAX_FIELD_BYTES:
        raise _malformed(f"field {name!r} is longer than {MAX_FIELD_BYTES} bytes",
                         f"/body/{name}")
    if name in form.fields:
        raise _malformed(f"field {name!r} is sent twice", f"/body/{name}")
    try:
        form.fields[name] = bytes(content).decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"field {name!r} is not UTF-8 text", f"/body/{name}") from None
