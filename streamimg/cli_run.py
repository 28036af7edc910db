"""``streamimg run``: load a topology, check everything, and run it as a daemon.

Everything that can be wrong is found before any Dask cluster starts or any offset
moves: the topology (it dry-runs on a synthetic frame), the broker's reachability,
the input topics, and with ``--check`` the librdkafka settings too. Then a cluster
starts (worker threads in this process by default, worker processes with
``--processes``, or the ``--scheduler`` given) and the daemon runs until SIGINT or
SIGTERM. Exit codes: see :mod:`streamimg.cli`.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path

from streamimg.cli import _connect, _kafka
from streamimg.errors import CommandError


def _check_clients(kafka, topology, args) -> None:
    """Build the daemon's consumer and producer, and close them: librdkafka checks ``--kafka``.

    The producer has no ``transactional.id``, so it fences nothing, and the consumer
    never subscribes, so it joins no group and moves no offset.
    """
    from confluent_kafka import Consumer, KafkaException, Producer

    group = args.group or topology.name
    tid = f"{topology.name}-{args.instance}"
    try:
        Consumer(kafka.consumer(group, f"{tid}-check")).close()
        conf = kafka.producer(tid)
        conf.pop("transactional.id")
        producer = Producer(conf)
        producer.flush(0)
        del producer
    except KafkaException as exc:
        raise CommandError(f"--kafka: {exc.args[0].str()}",
                           "fix or remove the librdkafka setting") from None


def cmd_run(args) -> int:
    """Load a topology and run it as a daemon until SIGINT/SIGTERM.

    Before any Dask cluster starts: the topology loads (exit 2), the broker answers
    (exit 4), the input topics exist or ``--create-topics`` creates them (exit 2).
    With ``--check``, stops there: the Kafka clients are built (the ``--kafka``
    settings validated), one line says what was checked, exit 0; nothing is
    created, consumed or committed and no Dask cluster starts.
    """
    from streamimg.config import ConfigError
    from streamimg.topology import TopologyError, load_topology

    try:
        topology = load_topology(args.topology)
        kafka = _kafka(args)
    except (TopologyError, ConfigError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if not 0 <= args.metrics_port <= 65535:
        raise CommandError(f"--metrics-port {args.metrics_port}: not a TCP port",
                           "give 1-65535, or 0 to serve no metrics")
    existing = _connect(args, kafka)
    missing = [t for t in topology.inputs if t not in existing]
    if args.check:
        if not args.create_topics:
            from streamimg.admin import require_topics

            require_topics(existing, topology.inputs, "input topic")
        _check_clients(kafka, topology, args)
        outputs = sorted({*topology.output_topics, topology.dlq_topic,
                          *topology.state_topics()})
        inputs = [f"{t} (missing: --create-topics creates it)" if t in missing else t
                  for t in topology.inputs]
        print(f"streamimg run --check: topology {topology.name!r} OK; "
              f"inputs: {', '.join(inputs)}; "
              f"outputs: {', '.join(f'{t} (exists)' if t in existing else t for t in outputs)}; "
              f"stages: {', '.join(topology.check().stages())}; "
              f"Kafka at {kafka.bootstrap} answers, "
              f"{len(args.kafka or [])} --kafka setting(s) accepted; "
              f"group {args.group or topology.name}, "
              f"transactional.id {topology.name}-{args.instance}", flush=True)
        return 0
    if missing and args.create_topics:
        from streamimg.admin import ensure_topics

        ensure_topics(kafka, missing, topology.partitions)
        logging.getLogger("streamimg.cli").info("created input topics %s", missing)
    elif missing:
        from streamimg.admin import require_topics

        require_topics(existing, topology.inputs, "input topic")
    signals: list[int] = []
    daemons: list = []

    def on_signal(signum, frame):
        # Installed before any cluster starts, so a signal during start-up never orphans
        # worker processes. The first SIGINT/SIGTERM drains and commits what is in flight;
        # a second one ends the process at once (what was not committed is read again).
        signals.append(signum)
        if len(signals) > 1:
            print("streamimg run: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        for d in daemons:
            d.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    from distributed import Client

    if args.log_format == "json":
        from streamimg.logs import adopt

        adopt("distributed")  # its own plain-text stderr handler goes
    from streamimg.cluster import (
        dashboard_link,
        in_process_cluster,
        local_cluster,
    )
    from streamimg.daemon import Daemon

    cluster = client = metrics = None
    try:
        if args.scheduler:
            client = Client(args.scheduler, timeout="30s")
        else:
            cluster = (local_cluster(n_workers=args.workers) if args.processes
                       else in_process_cluster(threads=args.workers))
            client = Client(cluster)
        if args.log_format == "json":
            logging.getLogger("streamimg.cli").info("Dask dashboard: %s",
                                                    dashboard_link(client))
        else:
            print(f"Dask dashboard: {dashboard_link(client)}", file=sys.stderr, flush=True)
        daemon = Daemon(topology, kafka, client, group=args.group, instance=args.instance,
                        stats_path=Path(args.stats_file) if args.stats_file else None)
        daemons.append(daemon)
        formatter = getattr(args, "log_formatter", None)
        if isinstance(getattr(formatter, "context", None), dict):  # JSON: the threads' lines
            formatter.context.update(run=daemon.run_id,
                                     transactional_id=daemon.transactional_id)
        if signals:  # asked to stop while starting: nothing was consumed
            return 0
        if args.metrics_port:
            from streamimg.metrics import DaemonMetrics

            metrics = DaemonMetrics.attach(daemon)
            try:
                metrics.serve(args.metrics_port, args.metrics_host)
            except OSError as exc:
                raise CommandError(f"--metrics-port {args.metrics_port}: cannot listen on "
                                   f"{args.metrics_host} ({exc.strerror or exc})",
                                   "choose a free port, or 0 to serve no metrics") from None
        # What start-up made (modules, the topology, the Dask cluster and client: ~250,000
        # objects on the light benchmark) lives as long as the process, yet every full
        # garbage collection walked it, holding the GIL: 135-184 ms every ~13 s on a quiet
        # host, a stall of every thread that showed as one slow frame in each latency run.
        # Collected once here and frozen (gc.freeze), later collections walk only what the
        # stream allocates.
        gc.collect()
        gc.freeze()
        logging.getLogger("streamimg.cli").info(
            "froze %d start-up objects: full garbage collections skip them",
            gc.get_freeze_count())
        return daemon.run()
    finally:
        if metrics is not None:
            metrics.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


