"""The OpenAPI document, finished: what FastAPI generates, made to say what the service does.

FastAPI documents every 4xx as ``application/json`` (its own ``HTTPValidationError`` for 422),
knows nothing of the 401 the API-key dependency raises or the 413 of the body-size middleware,
and declares the API-key security schemes even when no key is configured. Clients are generated
from this document and ``tests/test_api_schemathesis.py`` holds the running service to it, so
:func:`finish_openapi` corrects it:

- every error response is ``application/problem+json`` with the ``Problem`` schema
  (:class:`nas_service.api.schemas.ProblemDetails`);
- operations with a body may answer 400 (not JSON), 413 (too large) and 422; operations with
  parameters may answer 422;
- with API keys configured, every secured operation may answer 401; without, no operation is
  secured (the running service asks for no key, so the document must not either);
- a search job's budget states this service's ``max_search_candidates``, and requests name only
  the tasks the loaded GHN scores.

:func:`links` writes the OpenAPI links the routers declare (POST an architecture, then GET it by
the ``id`` of the response), which client tools and Schemathesis' stateful tests follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import PROBLEM_MEDIA_TYPE
from .schemas import ProblemDetails

PROBLEM_REF = "#/components/schemas/Problem"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# FastAPI's default 422 schema, replaced by Problem everywhere.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_BODY_ERRORS = {"400": "malformed request: the body is not JSON",
                "413": "request body too large",
                "422": "invalid request"}
_PARAMETER_ERRORS = {"422": "invalid request"}
_UNAUTHORIZED = {"401": "missing or invalid API key"}


def links(**targets: tuple[str, str]) -> dict[str, Any]:
    """``links`` of a response: ``name=(operation_id, "parameter=$response.body#/pointer")``.

    Operation ids are the route functions' names (``create_app`` sets that), so a link names
    the function it leads to.
    """
    out = {}
    for name, (operation_id, binding) in targets.items():
        parameter, expression = binding.split("=", 1)
        out[name] = {"operationId": operation_id, "parameters": {parameter: expression}}
    return out


def finish_openapi(document: dict[str, Any], *, api_keys: bool,
                   max_search_candidates: int | None = None,
                   scored_tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """``document`` (FastAPI's), corrected in place as the module says; returns it.

    ``max_search_candidates``: this service's limit on a job's budget, stated in the request's
    schema (responses keep the plain ``Budget``: a job may predate a lower limit).
    ``scored_tasks``: the tasks the loaded GHN scores, the only ones requests may name (every
    other known task is a 422 ``task-not-supported`` here).
    """
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    job_request = schemas.get("SearchJobRequest", {}).get("properties", {})
    if max_search_candidates is not None and "budget" in job_request:
        job_request["budget"] = {"allOf": [job_request["budget"]], "properties": {
            "candidates": {"maximum": max_search_candidates}}}
    for request in ("ArchitectureRequest", "SearchJobRequest"):
        task = schemas.get(request, {}).get("properties", {}).get("task")
        if scored_tasks and task is not None:
            task["enum"] = list(scored_tasks)
    problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for schema_name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(schema_name, None)

    for item in document.get("paths", {}).values():
        for method in _METHODS:
            operation = item.get(method)
            if operation is not None:
                _finish_operation(operation, api_keys=api_keys)
    if not api_keys:
        components.pop("securitySchemes", None)
    return document


def _finish_operation(operation: dict[str, Any], *, api_keys: bool) -> None:
    responses = operation.setdefault("responses", {})
    if "requestBody" in operation:
        _add(responses, _BODY_ERRORS)
    if operation.get("parameters"):
        _add(responses, _PARAMETER_ERRORS)
    if operation.get("security"):
        if api_keys:
            _add(responses, _UNAUTHORIZED)
        else:
            del operation["security"]
    for status, response in responses.items():
        if _is_error(status):
            response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}


def _add(responses: dict[str, Any], errors: dict[str, str]) -> None:
    for status, description in errors.items():
        responses.setdefault(status, {"description": description})


def _is_error(status: str) -> bool:
    return status[:1] in ("4", "5")
