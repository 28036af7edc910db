"""The ``streamimg`` command: broker, produce, produce-pixels, run, consume, demo.

Every mistake ends in one line on stderr, ``streamimg <command>: <what> (<what to do>)``,
and one of these exit codes; ``--verbose`` (alias ``--debug``) adds the traceback and
debug logging (librdkafka's own lines included)::

    0    success; also run and broker stopped by SIGINT/SIGTERM (Ctrl-C)
    1    other failure (demo: an input frame lacks exactly one committed result)
    2    usage, configuration or topology error; a missing or unreadable input file;
         a topic that does not exist (run without --create-topics, consume)
    3    fatal Kafka error, e.g. fenced by a newer instance with the same --instance
    4    broker unreachable within --connect-timeout seconds (checked first)
    130  interrupted: produce stopped by Ctrl-C after delivering what it had read

Commands that talk to Kafka check that a broker answers before anything else (before
a Dask cluster starts or an input is read past its first frame). ``produce`` publishes
an unreadable image of a folder as a failed frame record (the daemon dead-letters it
with the reason), with a warning line each, lists them as ``failed`` in its summary and
still exits 0; with ``--drop-failures`` it skips them, listed as ``skipped``.

Options also come from a TOML file (``--config``) and ``STREAMIMG_*`` environment
variables; a flag beats a variable, which beats the file (see :mod:`streamimg.settings`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from streamimg.errors import EXIT_FAILED, CommandError, error_line

# Heavy modules (numpy, dask, distributed, cv2, confluent_kafka) are imported inside the
# commands: `streamimg --help` must start in well under a second.


def _kafka(args):
    from streamimg.config import kafka_config

    return kafka_config(args.bootstrap, getattr(args, "kafka", None) or [])


def _connect(args, kafka) -> set[str]:
    """Check the broker answers (exit 4 otherwise); return the existing topic names."""
    from streamimg.admin import connect

    return connect(kafka, args.connect_timeout)


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
    """Publish a video, an image folder or cameras (:func:`streamimg.cli_produce.cmd_produce`)."""
    from streamimg.cli_produce import cmd_produce as produce

    return produce(args)


def cmd_produce_pixels(args) -> int:
    """Publish an image as pixel messages (:func:`streamimg.cli_produce.cmd_produce_pixels`)."""
    from streamimg.cli_produce import cmd_produce_pixels as produce_pixels

    return produce_pixels(args)


def cmd_run(args) -> int:
    """Run a topology as a daemon (:func:`streamimg.cli_run.cmd_run`)."""
    from streamimg.cli_run import cmd_run as run

    return run(args)


def cmd_consume(args) -> int:
    """Print a topic's committed records as JSON lines; optionally save frames as files.

    Frame records show their decoded headers, pixel records their fields
    (see :mod:`streamimg.describe`). While reading, a progress bar on stderr counts
    the records (out of the end offsets once the broker has reported them); the
    lines are printed after it.
    """
    kafka = _kafka(args)
    existing = _connect(args, kafka)
    from streamimg.admin import read_topic, require_topics
    from streamimg.describe import describe, save_frame
    from streamimg.progress import progress_bar

    require_topics(existing, [args.topic])
    save = Path(args.save_dir) if args.save_dir else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    with progress_bar("records") as progress:
        task = progress.add_task(f"reading {args.topic}", total=None)
        records = read_topic(kafka, args.topic, timeout_s=args.timeout,
                             on_progress=lambda read, end: progress.update(
                                 task, completed=read, total=end))
    for m in records:
        line = describe(m)
        if save and "frame" in line:
            try:
                line["saved"] = str(save_frame(m, save))
            except ValueError as exc:
                line["save_error"] = str(exc)
        print(json.dumps(line), flush=True)
    return 0


def cmd_ingest(args) -> int:
    """Turn analysis requests into frames, exactly-once (:mod:`streamimg.sources.ingest`)."""
    from streamimg.sources.ingest import Ingest

    kafka = _kafka(args)
    _connect(args, kafka)
    job = Ingest(kafka, args.requests, args.frames, group=args.group, instance=args.instance,
                 chunk_frames=args.chunk_frames, encoding=args.encoding)
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            print("streamimg ingest: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    code = job.run(stop)
    print(json.dumps(vars(job.stats)), flush=True)
    return code


def cmd_submit(args) -> int:
    """Write one analysis request to the requests topic (:class:`VideoRequest`)."""
    from confluent_kafka import Producer

    from streamimg.admin import ensure_topics
    from streamimg.sources.ingest import VideoRequest

    kafka = _kafka(args)
    _connect(args, kafka)
    vid = args.id or f"{Path(args.source).stem or 'video'}-{int(time.time() * 1000)}"
    req = VideoRequest.parse(vid.encode(), json.dumps({
        "id": vid, "source": args.source, "frame_step": args.frame_step, "limit": args.limit,
        "models": args.model or []}).encode())
    ensure_topics(kafka, [args.requests])
    producer = Producer({**kafka.producer(), "enable.idempotence": True, "acks": "all"})
    producer.produce(args.requests, key=req.id.encode(), value=req.to_json())
    if producer.flush(30) > 0:
        raise CommandError("the request was not delivered within 30 s", "check the broker",
                           EXIT_FAILED)
    print(req.to_json().decode(), flush=True)
    return 0


def cmd_serve(args) -> int:
    """The analysis service (:mod:`streamimg.service.serve`)."""
    from streamimg.service.serve import serve

    kafka = _kafka(args)
    if not args.embedded:
        _connect(args, kafka)
    return serve(kafka=kafka, db=args.db, topology=Path(args.topology),
                 requests=args.requests, host=args.host, port=args.port,
                 embedded=args.embedded, workdir=Path(args.workdir),
                 uploads=Path(args.uploads) if args.uploads else None,
                 models=tuple(args.model) if args.model else None,
                 kafka_flags=[x for item in args.kafka or [] for x in ("--kafka", item)],
                 max_upload_bytes=args.max_upload_mb * 1024 * 1024)


def cmd_demo(args) -> int:
    """Run the main job on two real clips with everything embedded (see ``streamimg.demo``)."""
    from streamimg.demo import run_demo

    return run_demo(topology=Path(args.topology), output=Path(args.output), limit=args.limit,
                    loop=args.loop, encoding=args.encoding, workers=args.workers,
                    keep=args.keep or args.serve,
                    serve_port=args.port if args.serve else None)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (not None/False); the epilog's line breaks kept."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``streamimg`` command (imports nothing heavy)."""
    codes = __doc__.split("::\n\n")[1].split("\n\n")[0]  # the table of the docstring
    p = argparse.ArgumentParser(prog="streamimg", epilog="exit codes:\n" + codes,
                                description=__doc__.splitlines()[0].replace("``", ""),
                                formatter_class=_Formatter)
    p.add_argument("-v", "--verbose", "--debug", action="store_true",
                   help="debug logging, and a traceback with every error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", "--debug", action="store_true",
                        default=argparse.SUPPRESS,
                        help="debug logging, and a traceback with every error")
    common.add_argument("--config", metavar="FILE",
                        help="TOML file of option defaults and [kafka] librdkafka settings "
                             "($STREAMIMG_CONFIG when omitted); STREAMIMG_<OPTION> variables "
                             "override it, flags override both")
    kafka = argparse.ArgumentParser(add_help=False)
    kafka.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka host:port[,...]")
    kafka.add_argument("--kafka", action="append", metavar="KEY=VALUE",
                       help="extra librdkafka setting (repeatable)")
    kafka.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="exit 4 if no broker answers within this time")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help, fn, talks_to_kafka=False):
        sp = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter,
                            parents=[common, kafka] if talks_to_kafka else [common])
        sp.set_defaults(fn=fn)
        return sp

    b = command("broker", "run the embedded Kafka-compatible broker", cmd_broker)
    b.add_argument("--port", type=int, default=9092, help="loopback port to listen on")

    pr = command("produce", "publish a video file, an image folder or live cameras as frames",
                 cmd_produce, True)
    pr.add_argument("source", nargs="?",
                    help="video file or URL (any FFmpeg format), folder of images (a local "
                         "path or an fsspec URL: file://, memory://, s3://...), or a live "
                         "source (rtsp://, rtmp://, srt://, udp://...)")
    pr.add_argument("--topic", required=True, help="topic to publish to (created if missing)")
    pr.add_argument("--stream", help="stream id (record key); the file name when omitted")
    pr.add_argument("--frame-step", type=int, default=1, help="keep every N-th frame")
    pr.add_argument("--limit", type=int, help="stop after this many frames (all when omitted)")
    pr.add_argument("--loop", type=int, default=1, help="read a video this many times")
    pr.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="raw",
                    help="frame payload encoding")
    pr.add_argument("--partitions", type=int, default=1, help="when creating the topic")
    pr.add_argument("--recursive", action="store_true",
                    help="folder: also the images of sub-folders (relative path order)")
    pr.add_argument("--sample-ratio", type=float, default=1.0, metavar="R",
                    help="folder: keep each file with probability R in (0, 1], fixed by "
                         "--seed and its relative path")
    pr.add_argument("--seed", type=int, default=0, help="folder: seed of --sample-ratio")
    pr.add_argument("--drop-failures", action="store_true",
                    help="folder: skip files that cannot be decoded (listed as skipped) "
                         "instead of publishing them as failed frame records")
    pr.add_argument("--webcam", type=int, metavar="N", help="live: read /dev/videoN (V4L2)")
    pr.add_argument("--camera", action="append", metavar="ID=URL",
                    help="live: one more camera, its stream id and URL (repeatable; each "
                         "reconnects on its own)")
    pr.add_argument("--reconnect", action="store_true",
                    help="read the source as live (e.g. an http(s) MPEG-TS, MJPEG or live "
                         "HLS stream): reconnect with backoff, gap records for outages")
    pr.add_argument("--fps", type=float, help="live: keep at most this many frames a second")
    pr.add_argument("--max-retries", type=int, metavar="N",
                    help="live: give up after N failed reconnects in a row (never when "
                         "omitted)")

    px = command("produce-pixels", "publish an image as pixel messages", cmd_produce_pixels,
                 True)
    px.add_argument("image", help="any image Pillow reads; sent as grey 0-255")
    px.add_argument("--topic", required=True, help="topic to publish to (created if missing)")
    px.add_argument("--name", help="image name in the records (the file stem when omitted)")
    px.add_argument("--frames", type=int, default=1, help="send the image as this many frames")
    px.add_argument("--binary", action="store_true", help="binary pixel layout, not text")
    px.add_argument("--partitions", type=int, default=1, help="when creating the topic")

    r = command("run", "run a topology as a long-lived daemon", cmd_run, True)
    r.add_argument("topology", help="topology file, e.g. topologies/video_analysis.py")
    r.add_argument("--create-topics", action="store_true",
                   help="create missing input topics (outputs and the DLQ are always "
                        "created); without it a missing input topic exits 2")
    r.add_argument("--scheduler", help="Dask scheduler address; a LocalCluster when omitted")
    r.add_argument("--workers", type=int, default=2,
                   help="local worker threads (in the daemon's process), or worker processes "
                        "with --processes")
    r.add_argument("--processes", action="store_true",
                   help="run local workers as processes instead of threads in this process")
    r.add_argument("--group", help="consumer group (the topology name when omitted)")
    r.add_argument("--instance", default="0",
                   help="stable instance id: transactional.id is <topology>-<instance>")
    r.add_argument("--stats-file", help="write run counters here as JSON after each commit")
    r.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz on this port "
                        "(0: off)")
    r.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address for --metrics-port (0.0.0.0: every interface)")
    r.add_argument("--check", action="store_true",
                   help="validate the topology, the --kafka settings and the input topics, "
                        "print one line and exit 0; starts no cluster, consumes nothing, "
                        "creates no topic")
    r.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="log lines as text, or as one JSON object each (time, level, "
                        "logger, message; the daemon's with run and transactional_id)")

    c = command("consume", "print a topic's committed records as JSON lines", cmd_consume,
                True)
    c.add_argument("topic", help="an existing topic")
    c.add_argument("--save-dir", help="write 8-bit frame records as PNG files here")
    c.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to reach the end of every partition")

    ing = command("ingest", "turn analysis requests (a videos topic) into frames, "
                  "exactly-once and resumable", cmd_ingest, True)
    ing.add_argument("--requests", default="videos", help="request topic (created if missing)")
    ing.add_argument("--frames", default="frames", help="topic the frames go to")
    ing.add_argument("--group", default="streamimg-ingest", help="consumer group")
    ing.add_argument("--instance", default="0",
                     help="stable instance id: transactional.id is <group>-<instance>")
    ing.add_argument("--chunk-frames", type=int, default=25,
                     help="frames per transaction (what a crash redoes at most)")
    ing.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="jpeg",
                     help="frame payload encoding")

    sb = command("submit", "request the analysis of a video (a record for streamimg ingest)",
                 cmd_submit, True)
    sb.add_argument("source", help="video path or URL, as the ingest job's machine sees it")
    sb.add_argument("--requests", default="videos", help="request topic (created if missing)")
    sb.add_argument("--id", help="analysis id (the frames' stream id); <name>-<ms> by default")
    sb.add_argument("--frame-step", type=int, default=1, help="keep every N-th frame")
    sb.add_argument("--limit", type=int, help="stop after this many frames")
    sb.add_argument("--model", action="append", help="model to run (repeatable; carried along)")

    sv = command("serve", "the analysis service: HTTP API and web page over the results",
                 cmd_serve, True)
    sv.add_argument("--embedded", action="store_true",
                    help="also start the embedded broker, the ingest job, the topology's "
                         "daemon and the results sink (SQLite under --workdir)")
    sv.add_argument("--topology", default="topologies/video_analysis.py",
                    help="the topology analysing the frames (names the models and topics)")
    sv.add_argument("--db", help="SQLAlchemy URL of the results database "
                                 "(sqlite:///<workdir>/results.db when omitted)")
    sv.add_argument("--requests", default="videos", help="request topic")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--workdir", default="streamimg-service",
                    help="folder for the database, images, uploads and job logs")
    sv.add_argument("--uploads", help="folder for uploaded videos (<workdir>/uploads)")
    sv.add_argument("--model", action="append",
                    help="a model name requests may ask for (repeatable; the topology's "
                         "analytics names when omitted)")
    sv.add_argument("--max-upload-mb", type=int, default=200, help="largest upload, MiB")

    d = command("demo", "the main job on two real clips, everything embedded", cmd_demo)
    d.add_argument("--topology", default="topologies/video_analysis.py", help="topology file")
    d.add_argument("--output", default="demo-output", help="folder for pictures and summary")
    d.add_argument("--limit", type=int,
                   help="frames to publish per clip (all by default: 132 and 120)")
    d.add_argument("--loop", type=int, default=1, help="read each clip this many times")
    d.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="raw",
                   help="input frame encoding")
    d.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    d.add_argument("--keep", action="store_true",
                   help="after the summary, keep broker, daemon and dashboard up until Ctrl-C")
    d.add_argument("--serve", action="store_true",
                   help="after the summary, keep everything up and serve the analysis "
                        "service (the demo's clips browsable, more videos submittable)")
    d.add_argument("--port", type=int, default=8000, help="port of --serve")
    return p


def _report(exc: BaseException, command: str, verbose: bool) -> int:
    """Print the one error line of ``exc`` (and its traceback if ``verbose``); its exit code."""
    if verbose:
        logging.getLogger("streamimg.cli").exception("streamimg %s failed", command)
    code, what, hint = error_line(exc, command)
    print(f"streamimg {command}: {what}" + (f" ({hint})" if hint else ""),
          file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamimg`` command; returns the exit code (see above).

    Option defaults come from the ``--config`` file and ``STREAMIMG_*`` variables
    (:mod:`streamimg.settings`), checked before the command runs: a bad one is exit 2.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    from streamimg.settings import apply_settings, merge_kafka

    try:
        config = apply_settings(parser, argv)
    except CommandError as exc:
        command = next((a for a in argv if not a.startswith("-")), "")
        return _report(exc, command, bool({"-v", "--verbose", "--debug"} & set(argv)))
    args = parser.parse_args(argv)
    if args.config not in (None, config):  # an abbreviation the first look did not see
        return _report(CommandError(f"--config {args.config}: not read",
                                    "write the option in full: --config FILE"),
                       args.command, args.verbose)
    args.config = config
    if hasattr(args, "kafka"):
        args.kafka = merge_kafka(args.kafka)
    # Read by distributed when it is first imported (later, by the command that needs it):
    # its INFO lines (scheduler and worker start-up, ~40 a run) go unless asked for.
    if not args.verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from streamimg.logs import configure

    args.log_formatter = configure(getattr(args, "log_format", "text"),
                                   logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except (Exception, KeyboardInterrupt) as exc:
        return _report(exc, args.command, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
