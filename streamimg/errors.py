"""Exit codes of the ``streamimg`` command, and the one line it prints for an error.

See :mod:`streamimg.cli` for the table; the line is
``streamimg <command>: <what> (<what to do>)``.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_FATAL, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A mistake the command reports in one line, with what to do and an exit code."""

    def __init__(self, what: str, hint: str | None = None, code: int = EXIT_CONFIG):
        super().__init__(what)
        self.hint, self.code = hint, code


def error_line(exc: BaseException, command: str) -> tuple[int, str, str | None]:
    """``(exit code, what, what to do)`` for an exception that ended ``streamimg <command>``.

    Maps the library's exceptions to the exit codes above; anything unexpected is exit 1
    with the exception's type and message. Imports nothing: a class is only checked if
    its module was loaded (an exception of it cannot exist otherwise).
    """
    mods = sys.modules
    if isinstance(exc, CommandError):
        return exc.code, str(exc), exc.hint
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted", None
    if "streamimg.admin" in mods:
        from streamimg.admin import BrokerUnreachable, MissingTopicError

        if isinstance(exc, BrokerUnreachable):
            return EXIT_UNREACHABLE, str(exc), (
                "start one with `streamimg broker`, or pass --bootstrap HOST:PORT of a "
                "running broker")
        if isinstance(exc, MissingTopicError):
            return EXIT_CONFIG, str(exc), (
                "pass --create-topics, or produce to it first" if command == "run" else
                "check the name; topics are created by produce and run")
    if "streamimg.config" in mods:
        from streamimg.config import ConfigError

        if isinstance(exc, ConfigError):
            return EXIT_CONFIG, str(exc), None
    if isinstance(exc, FileNotFoundError):
        return EXIT_CONFIG, str(exc), None
    if "streamimg.sinks.checkpoint" in mods:
        from streamimg.sinks.checkpoint import FatalKafkaError

        if isinstance(exc, FatalKafkaError):
            return EXIT_FATAL, str(exc), None
    if "confluent_kafka" in mods:
        from confluent_kafka import KafkaError, KafkaException

        if isinstance(exc, KafkaException) and isinstance(exc.args[0], KafkaError):
            err = exc.args[0]
            if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                return EXIT_UNREACHABLE, f"Kafka: {err.str()}", "check the broker"
            if err.fatal() or err.code() in (KafkaError._FENCED,
                                             KafkaError.PRODUCER_FENCED):
                return EXIT_FATAL, f"fatal Kafka error: {err.str()}", None
            return EXIT_FAILED, f"Kafka: {err.str()}", "run with --verbose for details"
    return EXIT_FAILED, f"{type(exc).__name__}: {exc}", "run with --verbose for the traceback"
