"""The Celery application, built from Settings; tasks reach their connections through it."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery

from shared.config import Settings
from shared.resources import Resources

APPLY_ACCOUNT_TASK = "tally.apply_account"
APPLY_ACCOUNTS_TASK = "tally.apply_accounts"
# A batch is published as tasks of this many accounts each.
ACCOUNTS_PER_TASK = 500
RELAY_OUTBOX_TASK = "tally.relay_outbox"


class TallyCelery(Celery):
    """A Celery app that carries tally's settings and per-process connections."""

    resources: Resources


def make_celery(settings: Settings) -> TallyCelery:
    app = TallyCelery("tally", set_as_current=False)
    app.resources = Resources(settings)
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        # Unacknowledged messages of a dead worker come back after this long;
        # the outbox relay usually gets there first.
        broker_transport_options={"visibility_timeout": 600},
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # Publishing from the API must not hang when Redis is down: the relay retries.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule={
            "relay-outbox": {
                "task": RELAY_OUTBOX_TASK,
                "schedule": timedelta(seconds=settings.relay_interval),
            }
        },
        include=["worker.tasks"],
    )
    return app
