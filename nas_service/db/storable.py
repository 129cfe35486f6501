"""What may be written to the database, checked in one place before anything is sent: a row
that exists can always be read back and served.

:func:`make_engine <nas_service.db.engine.make_engine>` installs both checks on every engine:

- :func:`json_serializer` writes JSON columns (scores, timings, constraints, event data) without
  NaN or infinities (PostgreSQL refuses them, and a response holding one cannot be rendered) and
  with every string as it is, so the text check below sees it;
- :func:`check_parameters` runs before every statement on its bound parameters: text must be
  UTF-8 (no lone surrogate, which no driver can send and no response can render), hold no NUL
  (PostgreSQL refuses it in text), and a JSON document kept as text (the ``graph`` column)
  must not hide a lone surrogate behind a ``\\ud800`` escape; numbers must be finite.

A value that fails raises :class:`UnstorableValue` before the statement is sent, so the
transaction writes nothing; the API answers it as a 422 problem, never a 500. Validation of the
requests (:mod:`nas_service.api.middleware`, the graph layer) refuses such values earlier, with
better messages: this is the net under them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nas_service.db.errors import StorageError

_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F]")


class UnstorableValue(StorageError, ValueError):
    """A value the database must not hold: the statement was not sent."""


def json_serializer(value: Any) -> str:
    """JSON text of a JSON column: strict numbers, strings kept as they are."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError as e:  # NaN or an infinity
        raise UnstorableValue(f"a JSON value the database cannot store: {e}") from None
    check_text(text)  # PostgreSQL's driver takes the text as it is
    return text


def check_parameters(parameters: Any) -> None:
    """Raises :class:`UnstorableValue` when a bound parameter of a statement is not storable
    (``parameters``: a mapping, a sequence, or a sequence of them for ``executemany``)."""
    if isinstance(parameters, Mapping):
        for value in parameters.values():
            check_value(value)
    elif isinstance(parameters, Sequence) and not isinstance(parameters, (str, bytes)):
        for value in parameters:
            if isinstance(value, (Mapping, list, tuple)):
                check_parameters(value)
            else:
                check_value(value)


def check_value(value: Any) -> None:
    """One parameter value."""
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UnstorableValue(f"a number the database cannot store: {value}")


def check_text(text: str) -> None:
    if "\x00" in text:
        raise UnstorableValue("text with a NUL character cannot be stored")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UnstorableValue("text with a lone surrogate (U+D800-U+DFFF) cannot be stored; "
                                  "UTF-8 cannot encode it") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _hides_surrogate(text):
        raise UnstorableValue("a JSON document whose strings hold a lone surrogate escape "
                              "cannot be stored")


def _hides_surrogate(text: str) -> bool:
    """Whether ``text``, read as JSON, holds a string UTF-8 cannot encode (text that is not
    JSON hides nothing: its escapes are characters)."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return False
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def storable_text(text: str, max_length: int | None = None) -> str:
    """``text`` made storable: for messages the service writes itself (a candidate's reason, a
    job's error), which quote what they like; NUL dropped, lone surrogates replaced by U+FFFD."""
    cleaned = text.replace("\x00", "")
    if not cleaned.isascii():
        cleaned = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in cleaned)
    return cleaned[:max_length] if max_length is not None else cleaned
