"""Log lines as text or JSON objects (``streamimg run --log-format json``).

:class:`JsonFormatter` turns every record into one line holding a JSON object
with ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger`` and
``message``, plus ``run`` and ``transactional_id`` when the record carries
them (the daemon's lines do, through a :class:`logging.LoggerAdapter`; see
:class:`~streamimg.daemon.Daemon`) or when :attr:`JsonFormatter.context`
supplies them (the ``run`` command sets it once its daemon exists, so the
lines of the committer and metrics threads carry them too), and
``exception`` with the traceback when there is one.

:func:`configure` installs the one stderr handler of the command and takes
over the handlers ``distributed`` installs for itself, so that in JSON mode no
plain-text line reaches stderr through logging.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Record attributes copied into the JSON object when present (``extra=`` keys).
CONTEXT_FIELDS = ("run", "transactional_id", "event")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Parameters
    ----------
    context : dict, optional
        Fields added to every line that does not carry them itself (e.g. ``run`` and
        ``transactional_id`` of the one daemon of the process). May be updated later.
    """

    def __init__(self, context: dict[str, Any] | None = None):
        super().__init__()
        self.context: dict[str, Any] = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        """The record as ``{"time", "level", "logger", "message", ...}``, one line."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:  # the record's own (extra=, LoggerAdapter) first
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        for key, value in self.context.items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def configure(fmt: str = "text", level: int = logging.INFO) -> logging.Formatter:
    """Log to stderr at ``level``, as ``fmt`` (``"text"`` or ``"json"``); return the formatter.

    Replaces the root logger's handlers with one stderr handler. In JSON mode
    Python warnings go through logging too (``logging.captureWarnings``).
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: expected 'text' or 'json'")
    formatter: logging.Formatter = (JsonFormatter() if fmt == "json"
                                    else logging.Formatter(TEXT_FORMAT))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":
        logging.captureWarnings(True)
    return formatter


def adopt(*names: str) -> None:
    """Send the loggers ``names`` through the root handler (drop their own handlers).

    ``distributed`` installs a plain-text stderr handler of its own when first
    imported and stops its records from propagating; in JSON mode the ``run``
    command calls this after importing it.
    """
    for name in names:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True


class EventLog(logging.LoggerAdapter):
    """A logger adapter adding its fields to every record, merged with the call's ``extra``.

    (:class:`logging.LoggerAdapter` before Python 3.13 replaces the call's ``extra``.)
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Merge the adapter's fields into ``kwargs["extra"]`` (the call's win)."""
        kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {})}
        return msg, kwargs
