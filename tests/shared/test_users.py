"""Who an adjustment is for: shared.intake.users, the accept function's target, a batch's users.

Everything runs in one transaction per test that is rolled back (`scratch_session`).
"""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.fields import BIGINT_MAX
from shared.intake.adjustments import Adjustment, Recorded, submit
from shared.intake.auth import Principal
from shared.intake.bulk import Award, resolve_users
from shared.intake.bulk_bodies import BatchInvalid
from shared.intake.users import balance_of, create_user, ensure_tenant
from shared.intake.validation import InvalidInput, UserInput, UserRef
from shared.models import Account, Role, Tenant, User
from shared.platform.config import DEFAULT_POINTS_TYPES

REPUTATION = DEFAULT_POINTS_TYPES["reputation"]


def new_tenant(session: Session) -> str:
    tenant = "t_" + secrets.token_hex(6)
    ensure_tenant(session, tenant)
    return tenant


def add_user(session: Session, tenant: str, username: str, **fields: str) -> User:
    return create_user(session, tenant, UserInput(username=username, **fields))


def principal_of(user: User) -> Principal:
    return Principal(user.id, user.tenant_id, user.username, "", Role(user.role))


# shared.intake.users


def test_ensure_tenant_creates_it_once(scratch_session: Session) -> None:
    tenant = new_tenant(scratch_session)
    ensure_tenant(scratch_session, tenant)
    assert scratch_session.get_one(Tenant, tenant).name == tenant


def test_create_user_fills_the_defaults(scratch_session: Session) -> None:
    tenant = new_tenant(scratch_session)
    user = add_user(scratch_session, tenant, "ann")
    assert (user.role, user.real_name, user.email, user.external_id) == ("user", "", "", None)


def test_a_taken_username_or_external_id_is_named(scratch_session: Session) -> None:
    tenant = new_tenant(scratch_session)
    add_user(scratch_session, tenant, "ann", external_id="ext-1")
    with pytest.raises(InvalidInput) as raised:
        add_user(scratch_session, tenant, "ann", external_id="ext-1")
    assert [(e.field, e.code) for e in raised.value.errors] == [
        ("username", "taken"),
        ("external_id", "taken"),
    ]
    # Both are unique per tenant only.
    other = new_tenant(scratch_session)
    assert add_user(scratch_session, other, "ann", external_id="ext-1").tenant_id == other


def test_balance_of_is_zero_before_the_first_adjustment(scratch_session: Session) -> None:
    tenant = new_tenant(scratch_session)
    user = add_user(scratch_session, tenant, "ann")
    assert balance_of(scratch_session, user.id, "reputation") == 0


# The accept function's target (shared.intake.adjustments.submit)


def record(session: Session, caller: User, target: UserRef) -> Recorded:
    adjustment = Adjustment(None, "reputation", 5, comment="c")
    return submit(session.connection(), principal_of(caller), target, adjustment, REPUTATION, None)


def test_the_target_is_found_by_username_or_by_id(scratch_session: Session) -> None:
    tenant = new_tenant(scratch_session)
    moderator = add_user(scratch_session, tenant, "mod", role="moderator")
    ann = add_user(scratch_session, tenant, "ann", real_name="Ann")
    by_name = record(scratch_session, moderator, UserRef("username", username="ann"))
    by_id = record(scratch_session, moderator, UserRef("user_id", user_id=ann.id))
    assert by_name.user.id == by_id.user.id == ann.id and by_name.user.real_name == "Ann"
    # The first request made the account; the second found it.
    assert by_name.account_id == by_id.account_id
    accounts = select(func.count()).where(Account.user_id == ann.id)
    assert scratch_session.scalar(accounts) == 1


@pytest.mark.parametrize(
    "target",
    [
        UserRef("username", username="nobody"),
        UserRef("username", username="ANN"),  # usernames are compared exactly
        UserRef("user_id", user_id=2**62),
        UserRef("user", user_id=0),
        UserRef("user", user_id=-1),
        UserRef("user_id", user_id=BIGINT_MAX + 1),  # no such BIGINT: not a database error
        UserRef("user_ref", user_id=10**40),
    ],
)
def test_an_unknown_target_is_invalid_input_naming_its_field(
    scratch_session: Session, target: UserRef
) -> None:
    tenant = new_tenant(scratch_session)
    moderator = add_user(scratch_session, tenant, "mod", role="moderator")
    add_user(scratch_session, tenant, "ann")
    with pytest.raises(InvalidInput) as raised:
        record(scratch_session, moderator, target)
    assert [(e.field, e.code) for e in raised.value.errors] == [(target.field, "not_found")]


def test_a_user_of_another_tenant_is_unknown(scratch_session: Session) -> None:
    mine, theirs = new_tenant(scratch_session), new_tenant(scratch_session)
    moderator = add_user(scratch_session, mine, "mod", role="moderator")
    stranger = add_user(scratch_session, theirs, "stranger")
    for target in (
        UserRef("username", username="stranger"),
        UserRef("user_id", user_id=stranger.id),
    ):
        with pytest.raises(InvalidInput) as raised:
            record(scratch_session, moderator, target)
        assert raised.value.errors[0].field == target.field


# A batch's users (shared.intake.bulk.resolve_users): all at once, every error by item


def award(position: int, user_id: int | None = None, username: str | None = None) -> Award:
    return Award(position, user_id, username, 1, "c", "")


def test_a_batch_resolves_ids_and_usernames_in_one_lookup(scratch_session: Session) -> None:
    tenant = new_tenant(scratch_session)
    ann, bob = add_user(scratch_session, tenant, "ann"), add_user(scratch_session, tenant, "bob")
    awards = [award(1, ann.id), award(2, username="bob"), award(3, bob.id, "bob")]
    assert resolve_users(scratch_session, tenant, awards) == {1: ann.id, 2: bob.id, 3: bob.id}


def test_a_batch_names_every_unknown_or_mismatched_user(scratch_session: Session) -> None:
    tenant, other = new_tenant(scratch_session), new_tenant(scratch_session)
    ann = add_user(scratch_session, tenant, "ann")
    add_user(scratch_session, tenant, "bob")
    stranger = add_user(scratch_session, other, "stranger")
    awards = [
        award(1, ann.id),
        award(2, username="nobody"),
        award(3, 2**62),
        award(4, ann.id, "bob"),
        award(5, stranger.id),
        award(6, BIGINT_MAX + 1),
        award(7, ann.id, "nobody"),  # the id decides when the name is unknown
    ]
    with pytest.raises(BatchInvalid) as raised:
        resolve_users(scratch_session, tenant, awards)
    assert [(e.position, e.field, e.code) for e in raised.value.errors] == [
        (2, "username", "not_found"),
        (3, "user_id", "not_found"),
        (4, "user_id", "mismatch"),
        (5, "user_id", "not_found"),
        (6, "user_id", "not_found"),
    ]
