"""The Celery application, built from Settings; tasks reach their connections through it."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property

from celery import Celery

from shared.config import Settings
from shared.dispatch import Dispatcher
from shared.ledger import Applied
from shared.notify import done_channel
from shared.processing import drain_accounts
from shared.resources import Resources

DRAIN_TASK = "tally.drain"
RELAY_OUTBOX_TASK = "tally.relay_outbox"


class TallyCelery(Celery):
    """A Celery app that carries tally's settings and per-process connections."""

    resources: Resources

    @cached_property
    def dispatcher(self) -> Dispatcher:
        """The one way work reaches the workers (see shared.dispatch)."""
        return Dispatcher(
            self.resources.redis,
            lambda: self.send_task(DRAIN_TASK),
            self.resources.settings.queue_name,
        )

    def apply(self, account_ids: list[str]) -> Applied:
        """Apply one chunk of these accounts' pending requests, with this app's settings."""
        settings = self.resources.settings
        return drain_accounts(
            account_ids,
            redis=self.resources.redis,
            channel=done_channel(settings.queue_name),
            sessions=self.resources.sessions,
            lock_ttl=settings.lock_ttl,
            lock_wait=settings.lock_wait,
            chunk=settings.apply_chunk,
        )


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
