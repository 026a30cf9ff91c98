"""The community API's read routes: the score list, the leaderboard, the reputation types."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api import examples, schemas
from api.auth import current_principal, require_writer
from api.body import read_query
from api.openapi import documented
from api.pagination import page
from api.problems import Problem
from api.resources import read_session, resources
from api.serializers import entry_score, leaderboard_object, period_object
from shared.models import ReputationType, User
from shared.reads.boards import leaderboard, own_rank
from shared.reads.ledger_reads import list_scores
from shared.reads.query_params import LeaderboardQuery, OwnRankQuery, ScoreListQuery

# Same prefix as the `score` blueprint: GET / here, POST / there.
bp = Blueprint("score_reads", __name__, url_prefix="/api/v2/score")


@bp.get("/")
@documented(
    operation_id="listScores",
    summary="List score changes (ledger entries) as Score objects",
    query=ScoreListQuery,
    responses={
        200: ("A page of Score objects", schemas.ScorePage),
        400: ("A malformed filter", schemas.Problem),
    },
)
@require_writer
def list_score() -> Response:
    """A page of the tenant's ledger entries as Score objects, filtered and ordered."""
    query = read_query(ScoreListQuery)
    points_type = resources().settings.default_points_type
    count, rows = list_scores(read_session(), current_principal().tenant_id, points_type, query)
    results = [entry_score(entry, user, creator) for entry, user, creator in rows]
    return jsonify(page(results, count, query))


@bp.get("/leaderboard/")
@documented(
    operation_id="getLeaderboard",
    summary="Users ranked by their total score over the filtered entries of a period",
    query=LeaderboardQuery,
    responses={
        200: ("A page of leaderboard rows", schemas.LeaderboardPage),
        400: ("A malformed filter", schemas.Problem),
    },
    answer_examples=examples.LEADERBOARD_ANSWERS,
)
@require_writer
def score_leaderboard() -> Response:
    """A page of users by their total over the entries that pass the filters."""
    query = read_query(LeaderboardQuery)
    points_type = resources().settings.default_points_type
    found = leaderboard(read_session(), current_principal().tenant_id, points_type, query)
    body = page([leaderboard_object(row) for row in found.rows], found.count, query)
    return jsonify(body | {"period": period_object(found.window)})


@bp.get("/leaderboard/me")
@documented(
    operation_id="getOwnRank",
    summary="One user's place on a board: the caller's, or `user_id`'s",
    query=OwnRankQuery,
    responses={
        200: ("The user's rank and total", schemas.OwnRank),
        400: ("A malformed filter", schemas.Problem),
        404: ("No such user", schemas.Problem),
    },
)
@require_writer
def own_rank_on_board() -> Response:
    """Where a user stands on the board the filters describe (rank null when not on it)."""
    query = read_query(OwnRankQuery)
    principal = current_principal()
    session = read_session()
    user = session.get(User, query.user_id if query.user_id is not None else principal.user_id)
    if user is None or user.tenant_id != principal.tenant_id:
        raise Problem(404, "not-found", f"no user {query.user_id}")
    points_type = resources().settings.default_points_type
    row, count, span = own_rank(session, principal.tenant_id, points_type, query, user.id)
    mine = schemas.OwnRank(
        user_id=user.id,
        user__username=user.username,
        user__real_name=user.real_name,
        total_score=row.total_score if row else 0,
        rank=row.rank if row else None,
        count=count,
        period=schemas.PeriodOut.model_validate(period_object(span)),
    )
    return jsonify(schemas.dump(mine))


@bp.get("/reputation_types/")
@documented(
    operation_id="listReputationTypes",
    summary="The reputation types tally records",
    responses={200: ("Every reputation type", schemas.ReputationTypeList)},
)
@require_writer
def reputation_types() -> Response:
    """The reputation types tally records; none carries a fixed number of points."""
    types = [
        schemas.ReputationTypeOut(id=kind.value, name=kind.name.lower(), points=None)
        for kind in ReputationType
    ]
    return jsonify(schemas.ReputationTypeList(types).model_dump(mode="json"))
