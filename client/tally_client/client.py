"""The blocking client: tally's calls driven by httpx.Client."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from tally_client import calls
from tally_client.errors import error_for
from tally_client.feed import DEFAULT_FEED_WAIT, EventFeed
from tally_client.models import (
    BatchStatus,
    BulkPlan,
    Hold,
    LeaderboardPage,
    OwnRank,
    ReputationType,
    RequestStatus,
    Score,
    Standing,
    StatementPage,
    Submission,
    Transaction,
    User,
)
from tally_client.retries import Retries

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


class Client:
    """A tally API client; one instance may be shared by threads. Close it, or use `with`.

    `timeout` bounds every try of every request (calls that ask the server to
    wait get that wait on top); `retries` says how transient failures are retried,
    always with the call's one idempotency key. Pass `http` to bring your own
    httpx.Client (proxies, certificates, hooks); the caller then closes it.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: Retries = Retries(),  # noqa: B008 (frozen, so sharing the default is safe)
        http: httpx.Client | None = None,
    ) -> None:
        self.endpoint = calls.Endpoint(base_url, token, timeout, retries)
        self._http = http or httpx.Client()
        self._owns_http = http is None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: calls.Call[T]) -> T:
        """Make the call's requests and pauses until it returns."""
        reply: calls.Reply = None
        try:
            while True:
                step = call.send(reply)
                if isinstance(step, calls.Sleep):
                    time.sleep(step.seconds)
                    reply = None
                    continue
                try:
                    reply = self._http.request(**step.arguments())
                except httpx.TransportError as error:
                    reply = error
        except StopIteration as done:
            result: T = done.value
            return result

    def adjust(
        self,
        user: int | str,
        score: int,
        *,
        reputation_context: str | None = None,
        comment: str | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Add `score` to a user (an int is a user id, a str a username): POST /api/v2/score/.

        `wait` seconds for the worker (None: the server's default; 0: answer 202 at once).
        Raises Rejected (409) if the account's state refuses it within the wait.
        """
        return self._run(
            calls.adjust(
                self.endpoint, user, score, reputation_context, comment, idempotency_key, wait
            )
        )

    def points_adjust(
        self,
        user_id: int | str,
        amount: int,
        *,
        reason: str | None = None,
        points_type: str | None = None,
        source: str | None = None,
        related_id: str | None = None,
        expires_at: str | None = None,
        allow_negative_balance: bool | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Adjust a user's points (seed 002): POST /admin/points/{user_id}/adjust.

        `user_id` is the user's external_id or integer id; `body` of the answer is
        seed 002's envelope. `expires_at` (ISO 8601) makes the points expire then.
        Raises Rejected (409) with its `reason`.
        """
        body = dict(
            amount=amount,
            reason=reason,
            points_type=points_type,
            source=source,
            related_id=related_id,
            expires_at=expires_at,
            allow_negative_balance=allow_negative_balance,
        )
        path = calls.points_path(user_id, "adjust")
        call = calls.points_operation(self.endpoint, path, body, idempotency_key, wait)
        return self._run(call)

    def hold(
        self,
        user_id: int | str,
        amount: int,
        *,
        expires_at: str | None = None,
        reason: str | None = None,
        points_type: str | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Hold `amount` points (spendable → frozen_balance) until captured, released or
        `expires_at`; the hold is `body["data"]["hold"]`, its id that of the request."""
        body = dict(amount=amount, expires_at=expires_at, reason=reason, points_type=points_type)
        path = calls.points_path(user_id, "holds")
        call = calls.points_operation(self.endpoint, path, body, idempotency_key, wait)
        return self._run(call)

    def capture(
        self,
        user_id: int | str,
        hold_id: int,
        amount: int | None = None,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Capture a hold, or `amount` of it (the rest is released)."""
        path = calls.points_path(user_id, "holds", int(hold_id), "capture")
        body = dict(amount=amount, reason=reason)
        call = calls.points_operation(self.endpoint, path, body, idempotency_key, wait)
        return self._run(call)

    def release(
        self,
        user_id: int | str,
        hold_id: int,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Release a hold: its points are spendable again."""
        path = calls.points_path(user_id, "holds", int(hold_id), "release")
        body = dict(reason=reason)
        call = calls.points_operation(self.endpoint, path, body, idempotency_key, wait)
        return self._run(call)

    def reverse(
        self,
        transaction_id: str,
        *,
        reason: str | None = None,
        allow_negative_balance: bool | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Reverse a points transaction (seed 002's id): one entry of the opposite amount.

        Raises Rejected with reason `already_reversed` for a second reversal.
        """
        path = f"/admin/points/transactions/{quote(transaction_id, safe='')}/reverse"
        body = dict(reason=reason, allow_negative_balance=allow_negative_balance)
        call = calls.points_operation(self.endpoint, path, body, idempotency_key, wait)
        return self._run(call)

    def reverse_score(
        self,
        score_id: int,
        *,
        comment: str | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Submission:
        """Reverse a score (the community API's entry id): a `reversal` Score object."""
        return self._run(
            calls.reverse_score(self.endpoint, score_id, comment, idempotency_key, wait)
        )

    def status(
        self, request_id: int | None = None, *, idempotency_key: str | None = None
    ) -> RequestStatus:
        """A request's status, by its id or by its idempotency key."""
        return self._run(calls.status(self.endpoint, request_id, idempotency_key))

    def wait(
        self,
        request: Submission | RequestStatus | int | None = None,
        *,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
        poll: float = 1.0,
    ) -> RequestStatus:
        """Follow a request until final: its completed status, or Rejected, or WaitTimeout."""
        request_id = None if request is None else calls.request_id_of(request)
        return self._run(calls.wait(self.endpoint, request_id, idempotency_key, timeout, poll))

    def bulk(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        key: str | None = None,
        reputation_context: str | None = None,
        comment: str | None = None,
        timeout: float | None = None,
    ) -> BatchStatus:
        """Submit adjustments as one idempotent batch: POST /api/v2/score/bulk (202).

        Items are shaped like `adjust`'s body (`user_id` or `username`, `score`, ...);
        `reputation_context` and `comment` fill items that lack them. Without a
        `key` one is generated for this call.
        """
        defaults = {"reputation_context": reputation_context, "comment": comment}
        return self._run(calls.bulk(self.endpoint, items, key, defaults, timeout))

    def plan_bulk(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        key: str,
        reputation_context: str | None = None,
        comment: str | None = None,
        timeout: float | None = None,
    ) -> BulkPlan:
        """What `bulk` with these items and key would do (a dry run): how many items it
        would create, and how many were accepted before under their own keys. Nothing is
        written; items that would be refused raise ValidationError, as `bulk` would."""
        defaults = {"reputation_context": reputation_context, "comment": comment}
        return self._run(calls.plan_bulk(self.endpoint, items, key, defaults, timeout))

    def import_csv(
        self,
        csv: str | bytes,
        *,
        key: str | None = None,
        filename: str = "awards.csv",
        timeout: float | None = None,
    ) -> BatchStatus:
        """Import a community CSV file as one batch: POST /api/v2/score/import/, dry_run=false."""
        return self._run(calls.import_csv(self.endpoint, csv, key, filename, timeout))

    def batch(self, batch: BatchStatus | str) -> BatchStatus:
        """A batch's status now."""
        return self._run(calls.batch(self.endpoint, calls.batch_id_of(batch)))

    def follow_batch(
        self,
        batch: BatchStatus | str,
        *,
        timeout: float = 600.0,
        poll: float = 1.0,
        on_progress: calls.OnProgress | None = None,
    ) -> BatchStatus:
        """Follow a batch until every item is final; `on_progress(status)` after each read."""
        batch_id = calls.batch_id_of(batch)
        return self._run(calls.follow_batch(self.endpoint, batch_id, timeout, poll, on_progress))

    def batch_items(
        self, batch: BatchStatus | str, *, status: str | None = None
    ) -> Iterator[RequestStatus]:
        """A batch's items with their status and reasons (`status="rejected"`: the
        rejected), read a page at a time as the iteration asks (never held whole)."""
        listing = calls.batch_items_listing(calls.batch_id_of(batch))
        return self._listed(listing, {"status": status})

    def scores(self, **filters: Any) -> Iterator[Score]:
        """Ledger entries as the community API lists them (GET /api/v2/score/), a page at
        a time; `filters` as the route's parameters (user_id, username,
        reputation_context, search, created_after, created_before, ordering)."""
        return self._listed(calls.SCORES, filters)

    def transactions(self, user: int | str, **filters: Any) -> Iterator[Transaction]:
        """A user's points transactions, newest first, a page at a time (`points_type`)."""
        return self._listed(calls.transactions_listing(user), filters)

    def get_hold(self, user: int | str, hold_id: int) -> Hold:
        """One hold of a user."""
        return self._run(calls.get_hold(self.endpoint, user, hold_id))

    def reputation_types(self) -> list[ReputationType]:
        return self._run(calls.reputation_types(self.endpoint))

    def freeze(
        self, user: int | str, *, points_type: str | None = None, reason: str | None = None
    ) -> Standing:
        """Freeze a user's account (admins): its requests are rejected until unfrozen."""
        call = calls.account_status(self.endpoint, user, "freeze", points_type, reason)
        return self._run(call)

    def unfreeze(
        self, user: int | str, *, points_type: str | None = None, reason: str | None = None
    ) -> Standing:
        """Unfreeze a user's account (admins)."""
        call = calls.account_status(self.endpoint, user, "unfreeze", points_type, reason)
        return self._run(call)

    def users(self, **filters: Any) -> Iterator[User]:
        """The tenant's users in id order (admins), a page at a time; `filters` as the
        route's parameters (`username` or `external_id` finds one)."""
        return self._listed(calls.USERS, filters)

    def get_user(self, user_id: int, *, as_of: datetime | str | None = None) -> User:
        """One user (admins), with its reputation now or as it stood at `as_of`."""
        return self._run(calls.get_user(self.endpoint, user_id, as_of))

    def create_user(
        self,
        username: str,
        *,
        external_id: str | None = None,
        real_name: str | None = None,
        email: str | None = None,
        avatar: str | None = None,
        description: str | None = None,
        role: str | None = None,
    ) -> User:
        """Create a user (admins): POST /api/v2/users/. Raises Conflict if the username or
        external_id is taken; the route has no idempotency key, so a retry after a lost
        answer may raise Conflict for the user it made (`users(username=...)` finds it)."""
        fields = dict(username=username, external_id=external_id, real_name=real_name,
                      email=email, avatar=avatar, description=description, role=role)  # fmt: skip
        return self._run(calls.create_user(self.endpoint, fields))

    def _listed(self, listing: calls.Listing[T], params: Mapping[str, Any]) -> Iterator[T]:
        offset = 0
        while True:
            items, count = self._run(calls.list_page(self.endpoint, listing, params, offset))
            yield from items
            offset += len(items)
            if not items or offset >= count:
                return

    def events(
        self,
        after: int = 0,
        *,
        types: Iterable[str] | None = None,
        account: str | None = None,
        limit: int = calls.FEED_PAGE_SIZE,
        wait: float = DEFAULT_FEED_WAIT,
        follow: bool = True,
    ) -> EventFeed:
        """The tenant's events past `after` (a saved `cursor`), in id order: GET /api/v2/events.

        Followed (the default), the iteration never ends: when caught up each request
        waits up to `wait` seconds for new events (`Prefer: wait`); call `stop()` on the
        feed to end it. With `follow=False` it ends once caught up. Save `feed.cursor`
        after handling an event; `types` and `account` narrow the feed.
        """
        return EventFeed(
            lambda position: self._run(
                calls.events_page(
                    self.endpoint, position, types, account, limit, wait if follow else 0
                )
            ),
            after,
            follow,
        )

    # Reads

    def leaderboard(
        self,
        *,
        period: str = "all",
        at: datetime | str | None = None,
        ranking: str = "row_number",
        limit: int = 20,
        offset: int = 0,
        **filters: Any,
    ) -> LeaderboardPage:
        """One page of a board (docs/periods.md): `period` day, week, month, quarter, year
        or all, the one `at` falls in (default now); `filters` as the route's parameters
        (reputation_type, reputation_context, exclude_manual, exclude_reset, search...)."""
        params = dict(filters, period=period, at=at, ranking=ranking, limit=limit, offset=offset)
        return self._run(calls.leaderboard(self.endpoint, params))

    def own_rank(
        self,
        user_id: int | None = None,
        *,
        period: str = "all",
        at: datetime | str | None = None,
        ranking: str = "row_number",
        **filters: Any,
    ) -> OwnRank:
        """A user's place on a board (default: the caller's)."""
        params = dict(filters, user_id=user_id, period=period, at=at, ranking=ranking)
        return self._run(calls.own_rank(self.endpoint, params))

    def balances(self, user: int | str, *, as_of: datetime | str | None = None) -> list[Standing]:
        """The user's accounts (seed 002's user id), now or as they stood at `as_of`."""
        return self._run(calls.balances(self.endpoint, user, as_of))

    def statement(
        self,
        user: int | str,
        *,
        begins: datetime | str | None = None,
        ends: datetime | str | None = None,
        points_type: str | None = None,
        page_size: int = calls.PAGE_SIZE,
    ) -> Iterator[StatementPage]:
        """The pages of a user's statement over [begins, ends), read one at a time as the
        iteration asks for them (a long statement is never held whole)."""
        params = {"from": begins, "to": ends, "points_type": points_type, "limit": page_size}
        return self._statement(calls.points_path(user, "statement"), params, envelope=True)

    def reputation_statement(
        self,
        user_id: int,
        *,
        begins: datetime | str | None = None,
        ends: datetime | str | None = None,
        page_size: int = calls.PAGE_SIZE,
    ) -> Iterator[StatementPage]:
        """`statement` of the user's reputation (the default points type), by its integer
        id: GET /api/v2/users/{id}/statement, a page at a time."""
        params = {"from": begins, "to": ends, "limit": page_size}
        return self._statement(calls.users_path(user_id, "statement"), params, envelope=False)

    def _statement(
        self, path: str, params: Mapping[str, Any], envelope: bool
    ) -> Iterator[StatementPage]:
        after = 0
        while True:
            page = self._run(calls.statement_page(self.endpoint, path, params, after, envelope))
            yield page
            if page.next_after is None:
                return
            after = page.next_after

    def export(
        self,
        *,
        kind: str = "entries",
        format: str = "ndjson",
        after: int = 0,
        begins: datetime | str | None = None,
        ends: datetime | str | None = None,
    ) -> Iterator[bytes]:
        """The tenant's entries (or requests) past `after`, streamed as the server sends
        them (NDJSON lines or CSV with a header). Not retried: on an error, start again
        with `after` set to the last id read."""
        params = {"kind": kind, "format": format, "after": after or None,
                  "from": begins, "to": ends}  # fmt: skip
        request = calls.export_request(self.endpoint, params)
        with self._http.stream(**request.arguments()) as response:
            if response.status_code != 200:
                response.read()
                raise error_for(response)
            yield from response.iter_bytes()
