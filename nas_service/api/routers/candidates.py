"""``/v1/candidates``: one candidate of a search job, and its weights."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from nas_service.db import Candidate, catalog

from ..deps import ReadSessionDep, ServiceDep
from ..errors import Problem, not_found, problem_responses, require_id
from ..openapi import links
from ..schemas import CandidateResponse
from ..views import candidate_views
from .downloads import ETAG, checkpoint_response

router = APIRouter(prefix="/candidates", tags=["candidates"])


@router.get("/{candidate_id}", response_model=CandidateResponse,
            responses={200: {"description": "the candidate", "links": links(
                GetCandidateCheckpoint=("get_candidate_checkpoint",
                                        "candidate_id=$response.body#/id"),
                GetArchitecture=("get_architecture",
                                 "architecture_id=$response.body#/architecture_id"))},
                **problem_responses(404)})
def get_candidate(candidate_id: str, session: ReadSessionDep) -> CandidateResponse:
    candidate = session.get(Candidate, require_id("candidate", candidate_id))
    if candidate is None:
        raise not_found("candidate", candidate_id)
    return candidate_views(session, [candidate])[0]


@router.get(
    "/{candidate_id}/checkpoint", response_class=Response,
    responses={200: {"description": "safetensors file of the candidate's predicted weights",
                     "content": {"application/octet-stream": {}}, "headers": ETAG},
               304: {"description": "If-None-Match matched the ETag", "headers": ETAG},
               **problem_responses(404)})
def get_candidate_checkpoint(
    candidate_id: str, session: ReadSessionDep, service: ServiceDep,
    if_none_match: Annotated[str | None, Header(max_length=4096)] = None,
) -> Response:
    candidate = session.get(Candidate, require_id("candidate", candidate_id))
    if candidate is None:
        raise not_found("candidate", candidate_id)
    architecture = (catalog.get_architecture(session, candidate.architecture_id)
                    if candidate.architecture_id else None)
    if architecture is None:
        raise Problem(404, f"candidate {candidate_id} was {candidate.status.value}, not scored: "
                      f"it has no weights" + (f" ({candidate.reason})" if candidate.reason else ""),
                      slug="no-checkpoint", title="No checkpoint")
    return checkpoint_response(session, service, architecture, if_none_match,
                               filename=f"candidate-{candidate.job_id}-{candidate.index}"
                                        ".safetensors")
