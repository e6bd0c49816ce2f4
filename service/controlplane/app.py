"""The faust application: the worker's process runtime and its control plane.

faust runs the event loop, the HTTP server (/metrics, probes, the page), signal handling and
orderly shutdown, and hosts agents for low-volume control topics and tables for state. The
image topic does not flow through it: the data plane (service/dataplane) consumes it with
librdkafka in a service of its own, because faust's per-event stream costs an order of
magnitude more per message than the whole scoring path.
"""

import faust
from faust.app import BootStrategy
from faust.types import ConsumerT

from service.config import Settings
from service.kafka.options import faust_credentials


class _Boot(BootStrategy):
    def _should_enable_kafka_consumer(self) -> bool:
        # faust's consumer subscribes to the topics of agents and tables; with none of them
        # it would subscribe to nothing, which aiokafka refuses. Start it only when needed.
        app = self.app
        return bool(app.agents) or bool(app.tables)


class ControlApp(faust.App):
    BootStrategy = _Boot
    #: How long stopping faust's consumer thread may take (mode's default is 60 s).
    consumer_stop_timeout: float = 60.0

    def _new_consumer(self) -> ConsumerT:
        consumer = super()._new_consumer()
        # Stopped while its group is still joining (a worker stopped soon after it
        # started, on a busy machine), aiokafka's consumer can wait out mode's whole
        # 60 s; the data plane has committed by then, so a shorter bound loses nothing.
        thread = getattr(consumer, "_thread", None)
        if thread is not None:
            thread.shutdown_timeout = self.consumer_stop_timeout
        return consumer


def control_group(settings: Settings) -> str:
    """faust's app id and consumer group: never the data plane's group, whose members speak
    another assignment protocol."""
    return f"{settings.group_id}.control"


def create_app(settings: Settings) -> ControlApp:
    app = ControlApp(
        control_group(settings),
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        broker_credentials=faust_credentials(settings),
        consumer_auto_offset_reset=settings.auto_offset_reset,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=settings.metrics_port > 0,
        web_port=settings.metrics_port or 6066,
        web_bind=settings.metrics_host,
        # The control group rebalances as workers come and go. faust's defaults (60 s) would
        # let a worker stopped during such a rebalance wait a minute for its consumer; the
        # data plane's session timeout bounds it instead, and frequent heartbeats make the
        # other members rejoin within a second.
        broker_session_timeout=settings.session_timeout,
        broker_rebalance_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(1.0, settings.session_timeout / 3),
    )
    app.consumer_stop_timeout = settings.session_timeout + 5.0
    return app
