"""The Celery application, built from Settings; tasks reach their connections through it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import cached_property

from celery import Celery
from kombu.entity import Queue

from shared.events.webhook_sender import WebhookSender
from shared.flow.dispatch import Dispatcher, Lane, ScanningDispatcher, queue_of
from shared.flow.outbox import pending_single_accounts
from shared.flow.processing import drain_accounts
from shared.ledger.apply import Applied
from shared.platform.config import Settings
from shared.platform.resources import Resources

DRAIN_TASK = "tally.drain"
RELAY_OUTBOX_TASK = "tally.relay_outbox"
EXPIRE_LOTS_TASK = "tally.expire_lots"
TIME_OUT_HOLDS_TASK = "tally.time_out_holds"
WARN_EXPIRING_TASK = "tally.warn_expiring"
PRUNE_EVENTS_TASK = "tally.prune_events"
DELIVER_WEBHOOKS_TASK = "tally.deliver_webhooks"
MAINTAIN_TASK = "tally.maintain_tables"
PARTITION_LEDGER_TASK = "tally.partition_ledger"
FORGET_REQUESTS_TASK = "tally.forget_requests"
# The tasks beat starts; they run on the relay lane, never behind single adjustments.
SCHEDULED_TASKS = (
    RELAY_OUTBOX_TASK,
    EXPIRE_LOTS_TASK,
    TIME_OUT_HOLDS_TASK,
    MAINTAIN_TASK,
    PARTITION_LEDGER_TASK,
    FORGET_REQUESTS_TASK,
)
# The event log's tasks (docs/events.md) on the events lane, whose workers also run the
# pump (worker.pump); webhook deliveries on a lane of their own.
EVENTS_TASKS = (WARN_EXPIRING_TASK, PRUNE_EVENTS_TASK)


class TallyCelery(Celery):
    """A Celery app that carries tally's settings and per-process connections."""

    resources: Resources

    @cached_property
    def dispatchers(self) -> dict[Lane, Dispatcher]:
        """The one way work reaches the workers, per lane (see shared.flow.dispatch)."""
        resources = self.resources
        settings = resources.settings

        def queue(lane: Lane) -> str:
            return queue_of(settings.queue_name, lane)

        redis, keys = resources.redis, resources.keys
        return {
            # Single adjustments are found in the database: the API's accept needs no
            # round trip to Redis while the workers are busy.
            Lane.INTERACTIVE: ScanningDispatcher(
                redis, keys, self._sender(Lane.INTERACTIVE), queue(Lane.INTERACTIVE),
                lambda rows, parked: pending_single_accounts(resources.engine, rows, parked),
            ),
            Lane.BULK: Dispatcher(
                redis, keys, self._sender(Lane.BULK), queue(Lane.BULK), settings.bulk_partitions
            ),
        }  # fmt: skip

    @cached_property
    def webhooks(self) -> WebhookSender:
        """This process's webhook sender (its HTTP client and threads, built on first use)."""
        resources = self.resources
        return WebhookSender(resources.settings, resources.engine, resources.sessions)

    def _sender(self, lane: Lane) -> Callable[[int], None]:
        queue = queue_of(self.resources.settings.queue_name, lane)

        def send(partition: int) -> None:
            self.send_task(DRAIN_TASK, args=[lane.value, partition], queue=queue)

        return send

    def apply(self, account_ids: list[str]) -> Applied:
        """Apply one chunk of these accounts' pending requests, with this app's settings."""
        settings = self.resources.settings
        keys = self.resources.keys
        return drain_accounts(
            account_ids,
            redis=self.resources.redis,
            keys=keys,
            channel=keys.done_channel(settings.queue_name),
            sessions=self.resources.sessions,
            lock_ttl=settings.lock_ttl,
            lock_wait=settings.lock_wait,
            chunk=settings.apply_chunk,
            caps=settings.caps,
        )


def make_celery(settings: Settings) -> TallyCelery:
    app = TallyCelery("tally", set_as_current=False)
    app.resources = Resources(settings)
    broker_url, sentinel_options = settings.redis.broker()
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        # Unacknowledged messages of a dead worker come back after this long;
        # the outbox relay usually gets there first.
        broker_transport_options={"visibility_timeout": 600, **sentinel_options},
        # One queue per lane; a worker started with `--lanes` consumes only its lanes' queues.
        task_queues=[Queue(queue_of(settings.queue_name, lane)) for lane in Lane],  # type: ignore[no-untyped-call]
        task_default_queue=settings.queue_name,
        task_routes={
            **{
                name: {"queue": queue_of(settings.queue_name, Lane.RELAY)}
                for name in SCHEDULED_TASKS
            },
            **{
                name: {"queue": queue_of(settings.queue_name, Lane.EVENTS)} for name in EVENTS_TASKS
            },
            DELIVER_WEBHOOKS_TASK: {"queue": queue_of(settings.queue_name, Lane.WEBHOOKS)},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # Publishing from the API must not hang when Redis is down: the relay retries.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        worker_prefetch_multiplier=1,
        # Task events, so that Flower's task list names every task (the drains, the relay,
        # the expiries, the hold timeouts): a few Redis messages per task, and a drain task
        # applies many chunks.
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "relay-outbox": {
                "task": RELAY_OUTBOX_TASK,
                "schedule": timedelta(seconds=settings.relay_interval),
            },
            "expire-lots": {
                "task": EXPIRE_LOTS_TASK,
                "schedule": timedelta(seconds=settings.expiry_interval),
            },
            "time-out-holds": {
                "task": TIME_OUT_HOLDS_TASK,
                "schedule": timedelta(seconds=settings.expiry_interval),
            },
            "warn-expiring": {
                "task": WARN_EXPIRING_TASK,
                "schedule": timedelta(seconds=settings.expiry_interval),
            },
            "prune-events": {"task": PRUNE_EVENTS_TASK, "schedule": timedelta(hours=1)},
            "partition-ledger": {"task": PARTITION_LEDGER_TASK, "schedule": timedelta(hours=1)},
            "forget-requests": {
                "task": FORGET_REQUESTS_TASK,
                "schedule": timedelta(minutes=5),
            },
            **(
                {
                    "maintain-tables": {
                        "task": MAINTAIN_TASK,
                        "schedule": timedelta(seconds=settings.analyze_interval),
                    }
                }
                if settings.analyze_interval > 0
                else {}
            ),
        },
        include=["worker.tasks"],
    )
    return app
