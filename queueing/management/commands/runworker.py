"""``manage.py runworker chat-worker``: channels' runworker, with the queue worker's start-up,
restart-on-failure and clean SIGTERM handling (its jobs go back to the queue at once)."""

from __future__ import annotations

from channels.management.commands.runworker import Command as ChannelsRunworker

from queueing.consumers import SchedulerWorker


class Command(ChannelsRunworker):
    worker_class = SchedulerWorker
