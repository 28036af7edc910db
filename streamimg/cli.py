"""The ``streamimg`` command: broker, produce, run, consume, demo.

Exit codes: 0 success; 2 bad arguments, topology or configuration (nothing
consumed); 3 fatal Kafka error (e.g. fenced by a newer instance); 1 other
failures (``demo``: some input frame lacks exactly one committed result).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

EXIT_CONFIG = 2


def _kafka(args):
    from streamimg.config import ConfigError, KafkaConfig

    extra, fields = {}, {}
    for item in getattr(args, "kafka", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--kafka {item!r}: expected KEY=VALUE (a librdkafka setting)")
        if key == "session.timeout.ms":
            fields["session_timeout_ms"] = int(value)
        elif key == "heartbeat.interval.ms":
            fields["heartbeat_interval_ms"] = int(value)
        else:
            extra[key] = value
    return KafkaConfig(bootstrap=args.bootstrap, extra=extra, **fields)


def cmd_broker(args) -> int:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM."""
    from streamimg.broker import EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the broker starts: never orphan it
        signal.signal(sig, lambda *_: stop.set())
    broker = EmbeddedBroker(port=args.port).start()
    print(f"embedded Kafka-compatible broker (Tansu) on {broker.bootstrap}", flush=True)
    try:
        while not stop.wait(0.5):
            if broker.process.poll() is not None:
                print(f"broker exited with code {broker.process.returncode}", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


def cmd_produce(args) -> int:
    """Publish a video file or a folder of images as frame messages."""
    from rich.progress import Progress

    from streamimg.admin import ensure_topics
    from streamimg.sources.video import produce_frames, read_images, read_video

    source = Path(args.source)
    kafka = _kafka(args)
    frames = (read_images(source, frame_step=args.frame_step, limit=args.limit)
              if source.is_dir() else
              read_video(source, frame_step=args.frame_step, limit=args.limit, loop=args.loop))
    ensure_topics(kafka, [args.topic], args.partitions)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"producing {source.name} -> {args.topic}", total=args.limit)
        ends = produce_frames(kafka, args.topic, frames, stream=args.stream or source.stem,
                              encoding=args.encoding,
                              on_frame=lambda f: progress.advance(task))
    print(json.dumps({"topic": args.topic, "end_offsets": ends, "frames": sum(ends.values())}))
    return 0


def cmd_produce_pixels(args) -> int:
    """Publish an image as pixel messages ``name;frame;x;y;v`` (grey, 0-255), key = name."""
    from confluent_kafka import Producer
    from PIL import Image

    from streamimg.admin import ensure_topics, produce
    from streamimg.codecs.pixel import frame_to_pixels

    with Image.open(args.image) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    kafka = _kafka(args)
    ensure_topics(kafka, [args.topic], args.partitions)
    producer = Producer({**kafka.producer(), "enable.idempotence": True, "linger.ms": 20})
    name = args.name or Path(args.image).stem
    sent = 0
    for index in range(args.frames):
        for value in frame_to_pixels(name, index, grey, binary=args.binary):
            produce(producer, args.topic, value=value, key=name.encode())
            sent += 1
    if producer.flush(60) > 0:
        print(f"streamimg produce-pixels: {len(producer)} records undelivered", file=sys.stderr)
        return 1
    print(json.dumps({"topic": args.topic, "name": name, "height": grey.shape[0],
                      "width": grey.shape[1], "frames": args.frames, "records": sent}))
    return 0


def cmd_run(args) -> int:
    """Load a topology and run it as a daemon until SIGINT/SIGTERM."""
    from streamimg.config import ConfigError
    from streamimg.topology import TopologyError, load_topology

    try:
        topology = load_topology(args.topology)
        kafka = _kafka(args)
    except (TopologyError, ConfigError, ValueError) as exc:
        print(f"streamimg run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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

    from streamimg.cluster import in_process_cluster, local_cluster
    from streamimg.daemon import Daemon

    cluster = client = None
    try:
        if args.scheduler:
            client = Client(args.scheduler, timeout="30s")
        else:
            cluster = (local_cluster(n_workers=args.workers) if args.processes
                       else in_process_cluster(threads=args.workers))
            client = Client(cluster)
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        daemon = Daemon(topology, kafka, client, group=args.group, instance=args.instance,
                        stats_path=Path(args.stats_file) if args.stats_file else None)
        daemons.append(daemon)
        if signals:  # asked to stop while starting: nothing was consumed
            return 0
        return daemon.run()
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def cmd_consume(args) -> int:
    """Print a topic's committed records as JSON lines; optionally save frames as files."""
    from streamimg.admin import read_topic
    from streamimg.codecs.frame import FrameDecodeError, decode_payload, parse_header

    save = Path(args.save_dir) if args.save_dir else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    for m in read_topic(_kafka(args), args.topic, timeout_s=args.timeout):
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in m.headers() or ()}
        line = {"topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                "key": (m.key() or b"").decode("utf-8", "replace"), "headers": headers}
        try:
            line["value"] = json.loads(m.value())
        except (TypeError, ValueError):
            line["value_bytes"] = len(m.value() or b"")
        if save and "streamimg.encoding" in headers:
            try:
                header = parse_header(m.headers())
                frame = decode_payload(header, m.value())
            except FrameDecodeError as exc:
                line["save_error"] = str(exc)
            else:
                from streamimg.analytics.annotate import encode_image

                path = save / f"{header.stream}_{header.frame:06d}.png"
                rgb = frame if header.order != "BGR" else frame[:, :, ::-1]
                path.write_bytes(encode_image(rgb if rgb.shape[2] != 1 else rgb[:, :, 0], "png"))
                line["saved"] = str(path)
        print(json.dumps(line), flush=True)
    return 0


def cmd_demo(args) -> int:
    """Run the main job on a real clip with everything embedded (see ``streamimg.demo``)."""
    from streamimg.demo import run_demo

    return run_demo(topology=Path(args.topology), output=Path(args.output), limit=args.limit,
                    loop=args.loop, encoding=args.encoding, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``streamimg`` command."""
    p = argparse.ArgumentParser(prog="streamimg", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker")
    b.add_argument("--port", type=int, default=9092)
    b.set_defaults(fn=cmd_broker)

    def bootstrap(sp):
        sp.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka host:port")
        sp.add_argument("--kafka", action="append", metavar="KEY=VALUE",
                        help="extra librdkafka setting (repeatable)")

    pr = sub.add_parser("produce", help="publish a video file or image folder as frames")
    pr.add_argument("source", help="video file (any FFmpeg format) or folder of images")
    pr.add_argument("--topic", required=True)
    bootstrap(pr)
    pr.add_argument("--stream", help="stream id (record key); the file name by default")
    pr.add_argument("--frame-step", type=int, default=1)
    pr.add_argument("--limit", type=int)
    pr.add_argument("--loop", type=int, default=1, help="read a video this many times")
    pr.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="raw")
    pr.add_argument("--partitions", type=int, default=1, help="when creating the topic")
    pr.set_defaults(fn=cmd_produce)

    px = sub.add_parser("produce-pixels", help="publish an image as pixel messages")
    px.add_argument("image", help="any image Pillow reads; sent as grey 0-255")
    px.add_argument("--topic", required=True)
    bootstrap(px)
    px.add_argument("--name", help="image name in the records (the file stem by default)")
    px.add_argument("--frames", type=int, default=1, help="send the image as this many frames")
    px.add_argument("--binary", action="store_true", help="binary pixel layout, not text")
    px.add_argument("--partitions", type=int, default=1, help="when creating the topic")
    px.set_defaults(fn=cmd_produce_pixels)

    r = sub.add_parser("run", help="run a topology as a long-lived daemon")
    r.add_argument("topology", help="topology file, e.g. topologies/video_analysis.py")
    bootstrap(r)
    r.add_argument("--scheduler", help="Dask scheduler address; a LocalCluster when omitted")
    r.add_argument("--workers", type=int, default=2,
                   help="local worker threads (in the daemon's process), or worker processes "
                        "with --processes (default 2)")
    r.add_argument("--processes", action="store_true",
                   help="run local workers as processes instead of threads in this process")
    r.add_argument("--group", help="consumer group (the topology name by default)")
    r.add_argument("--instance", default="0",
                   help="stable instance id: transactional.id is <topology>-<instance>")
    r.add_argument("--stats-file", help="write run counters here as JSON after each commit")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("consume", help="print a topic's committed records as JSON lines")
    c.add_argument("topic")
    bootstrap(c)
    c.add_argument("--save-dir", help="write frame records as PNG files here")
    c.add_argument("--timeout", type=float, default=60.0)
    c.set_defaults(fn=cmd_consume)

    d = sub.add_parser("demo", help="the main job on a real clip, everything embedded")
    d.add_argument("--topology", default="topologies/video_analysis.py")
    d.add_argument("--output", default="demo-output")
    d.add_argument("--limit", type=int, help="frames to publish (all 132 by default)")
    d.add_argument("--loop", type=int, default=1)
    d.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="raw")
    d.add_argument("--workers", type=int, default=2)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamimg`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
