"""Option defaults from a TOML file and ``STREAMIMG_*`` environment variables.

Precedence, highest first: a flag on the command line, an environment variable, the
file, the built-in default. The file is ``--config FILE``, else ``$STREAMIMG_CONFIG``::

    bootstrap = "kafka-1:9093,kafka-2:9093"   # top level: every command with the option
    connect-timeout = 10

    [run]                                       # `streamimg run` only (also [produce] ...)
    workers = 4
    metrics-port = 9100                         # `-` or `_`, as on the command line

    [kafka]                                     # librdkafka settings, verbatim, every client
    "security.protocol" = "SASL_SSL"
    "sasl.mechanism" = "PLAIN"

Option ``--metrics-port`` is the variable ``STREAMIMG_METRICS_PORT``; a librdkafka
setting is ``STREAMIMG_KAFKA_<KEY>``, its dots written ``_`` (``_`` as ``__``, ``-`` as
``___``): ``STREAMIMG_KAFKA_SASL_MECHANISM=PLAIN`` is ``sasl.mechanism=PLAIN``. Booleans
are true/false, 1/0, yes/no or on/off. ``--kafka KEY=VALUE`` overrides the same key from
the environment or the file; the keys merge otherwise. Positional arguments (topology,
input file) come from the command line only.

Every value is converted and checked before the command starts, before anything
connects: an unknown key or variable, or a bad value, is a :class:`CommandError`
(exit 2) naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamimg.errors import CommandError

PREFIX, KAFKA_PREFIX, CONFIG_ENV = "STREAMIMG_", "STREAMIMG_KAFKA_", "STREAMIMG_CONFIG"
# Variables the project reads elsewhere (fault injection, test switches): not options.
INTERNAL_ENV = frozenset({CONFIG_ENV, "STREAMIMG_CRASH_AT", "STREAMIMG_FENCE_CHECK_S",
                          "STREAMIMG_CHAOS", "STREAMIMG_KAFKA_BOOTSTRAP"})
TRUE, FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})
NOT_SETTABLE = frozenset({"help", "config", "kafka"})  # kafka: the [kafka] table instead


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Return ``{command name: its parser}`` for the subcommands of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Return ``{dest: action}`` for the flags of ``parser`` a file or variable may set.

    Not positional arguments, ``--help``, ``--config``, nor ``--kafka`` (librdkafka
    settings have the ``[kafka]`` table and the ``STREAMIMG_KAFKA_`` prefix).
    """
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_SETTABLE}


def _flag(dest: str) -> str:
    return dest.replace("_", "-")


def _unknown(what: str, name: str, known: Iterable[str], hint: str) -> CommandError:
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return CommandError(what, f"did you mean {close[0]!r}?" if close else hint)


def kafka_key(variable: str) -> str:
    """Return the librdkafka key of variable ``STREAMIMG_KAFKA_<KEY>`` (``_`` is ``.``).

    Raises
    ------
    CommandError
        If ``<KEY>`` is empty, starts or ends with ``_``, or has ``____``.
    """
    rest = variable[len(KAFKA_PREFIX):]
    if not rest or re.search("^_|_$|_{4}", rest):
        raise CommandError(f"environment variable {variable}: not a librdkafka setting",
                           "write sasl.mechanism as STREAMIMG_KAFKA_SASL_MECHANISM")
    return re.sub("_{1,3}", lambda m: {1: ".", 2: "_", 3: "-"}[len(m[0])], rest).lower()


def convert(action: argparse.Action, value: Any, where: str) -> Any:
    """Return ``value`` (TOML's, or a variable's text) converted as ``action`` does its flag.

    ``where`` names the value and its source in the error, e.g. ``STREAMIMG_WORKERS='two'``.

    Raises
    ------
    CommandError
        If the value is not of the option's type, or not one of its choices.
    """
    if action.nargs == 0:  # store_true
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in TRUE | FALSE:
            return value if isinstance(value, bool) else text in TRUE
        raise CommandError(f"{where}: not a boolean", "give true or false, 1 or 0, yes or no")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CommandError(f"{where}: not a string or number", f"see --{_flag(action.dest)}")
    try:
        if action.type is int and isinstance(value, float):
            raise ValueError(value)
        value = (action.type or str)(value if action.type else str(value))
    except ValueError:
        what, hint = {int: ("an integer", "give a whole number"),
                      float: ("a number", "give a number")}.get(action.type, ("valid", None))
        raise CommandError(f"{where}: not {what}", hint) from None
    if action.choices is not None and value not in action.choices:
        raise CommandError(f"{where}: not one of {', '.join(map(str, action.choices))}")
    return value


def read_toml(path: str, given_by: str) -> dict[str, Any]:
    """Return the contents of TOML file ``path``, named by ``given_by`` (an option, a variable).

    Raises
    ------
    CommandError
        If the file does not exist, cannot be read, or is not valid TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CommandError(f"{given_by} {path}: no such file",
                           "give the path of a TOML configuration file") from None
    except OSError as exc:
        raise CommandError(f"{given_by} {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path}: not valid TOML ({exc})") from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # An unquoted ``sasl.mechanism = ...`` is the table {"sasl": {"mechanism": ...}} in TOML.
    flat: dict[str, Any] = {}
    for key, value in table.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else {prefix + key: value})
    return flat


def file_settings(data: Mapping[str, Any], path: str, command: str,
                  commands: Mapping[str, argparse.ArgumentParser]
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the option defaults for ``command`` and the librdkafka settings of a file.

    ``({dest: converted value}, {librdkafka key: value as a string})``; a ``[command]``
    table overrides the top level. Every key is checked, in other commands' tables too;
    the values where they apply to ``command``.

    Raises
    ------
    CommandError
        Naming the file, the table and the key: unknown key or table, or a bad value.
    """
    everyone = {d for p in commands.values() for d in options(p)}
    for key, value in data.items():
        table = key == "kafka" or key in commands
        if table and not isinstance(value, dict):
            raise CommandError(f"{path}: {key!r} must be a table", f"write [{key}] above it")
        if isinstance(value, dict) and not table:
            raise _unknown(f"{path}: unknown table [{key}]", key, ["kafka", *commands],
                           "the tables are [kafka] and one per command, e.g. [run]")
    values: dict[str, Any] = {}
    for name in (None, *(n for n in commands if n in data)):  # the top level first
        table = data[name] if name else {k: v for k, v in data.items() if not isinstance(v, dict)}
        known = options(commands[name]) if name else dict.fromkeys(everyone)
        own = options(commands[command]) if name in (None, command) else {}
        where = f"{path} [{name}]" if name else path
        for key, value in table.items():
            dest = key.replace("-", "_")
            if dest not in known:
                owners = [f"[{n}]" for n, p in commands.items() if dest in options(p)]
                raise _unknown(f"{where}: unknown key {key!r}", key, map(_flag, known),
                               "librdkafka settings go in [kafka]"
                               if "." in key or isinstance(value, dict) else
                               f"an option of {', '.join(owners)} only" if owners else
                               f"see `streamimg {name or 'COMMAND'} --help` for the options")
            if dest in own:
                values[dest] = convert(own[dest], value, f"{where}: {key} = {value!r}")
    kafka: dict[str, str] = {}
    for key, value in _flatten(data.get("kafka", {})).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, (str, int, float)):
            raise CommandError(f"{path} [kafka]: {key!r} = {value!r}: not a string, number or "
                               "boolean", "a librdkafka list is one string, comma-separated")
        kafka[key] = str(value)
    return values, kafka


def env_settings(environ: Mapping[str, str], command: str,
                 commands: Mapping[str, argparse.ArgumentParser]
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the option defaults for ``command`` and the librdkafka settings of the environment.

    ``({dest: converted value}, {librdkafka key: value})`` from the ``STREAMIMG_*``
    variables; one naming another command's option is ignored (one environment serves
    every command), and :data:`INTERNAL_ENV` are not options.

    Raises
    ------
    CommandError
        Naming the variable: not an option of any command, or a bad value.
    """
    everyone = {d for p in commands.values() for d in options(p)}
    own = options(commands[command])
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    for name in sorted(n for n in environ if n.startswith(PREFIX) and n not in INTERNAL_ENV):
        value, dest = environ[name], name[len(PREFIX):].lower()
        if name.startswith(KAFKA_PREFIX):
            kafka[kafka_key(name)] = value
        elif dest == "kafka":
            raise CommandError(f"environment variable {name}: not an option",
                               "give each librdkafka setting as STREAMIMG_KAFKA_<KEY>, e.g. "
                               "STREAMIMG_KAFKA_SASL_MECHANISM=PLAIN")
        elif dest not in everyone:
            raise _unknown(f"unknown environment variable {name}", name,
                           [PREFIX + d.upper() for d in everyone] + sorted(INTERNAL_ENV),
                           "unset it, or see `streamimg COMMAND --help` for the options")
        elif dest in own:
            values[dest] = convert(own[dest], value, f"{name}={value!r}")
    return values, kafka


def apply_settings(parser: argparse.ArgumentParser, argv: Sequence[str],
                   environ: Mapping[str, str] | None = None) -> str | None:
    """Make the file's and the environment's values the defaults of ``parser``.

    Finds the command in ``argv`` and its ``--config`` (else ``$STREAMIMG_CONFIG``),
    then sets the command's option defaults (``set_defaults``), so flags in ``argv``
    still win; librdkafka settings become the default ``--kafka`` list, which ``--kafka``
    flags extend (see :func:`merge_kafka`). An option set so is no longer required on
    the command line. Does nothing for ``--help`` or an unknown command (the parser
    reports those). Returns the configuration file read, or None.

    Raises
    ------
    CommandError
        Naming the key and its source, for the first bad setting found.
    """
    environ = os.environ if environ is None else environ
    commands = subcommands(parser)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in commands or {"-h", "--help"} & set(argv):
        return None
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--config")
    try:
        given = pre.parse_known_args(list(argv)[list(argv).index(command) + 1:])[0].config
    except argparse.ArgumentError:
        return None  # `--config` without a file: the parser says so
    path, given_by = (given, "--config") if given else (environ.get(CONFIG_ENV), CONFIG_ENV)
    values: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    if path:
        values, kafka = file_settings(read_toml(path, given_by), path, command, commands)
    env_values, env_kafka = env_settings(environ, command, commands)
    values.update(env_values)
    kafka.update(env_kafka)
    sub = commands[command]
    if "verbose" in values:  # on the top parser: `streamimg -v run` must still win
        parser.set_defaults(verbose=values.pop("verbose"))
    for dest, action in options(sub).items():
        action.required = action.required and dest not in values
    if kafka and any(a.dest == "kafka" for a in sub._actions):
        values["kafka"] = [f"{k}={v}" for k, v in kafka.items()]
    sub.set_defaults(**values)
    return path or None


def merge_kafka(items: Sequence[str] | None) -> list[str] | None:
    """Return ``KEY=VALUE`` items with one per key: the last value, in first-seen order.

    Items without ``=`` stay as they are, for the command to report.
    """
    if items is None:
        return None
    merged: dict[str, str] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        merged[key if sep and key else item] = item
    return list(merged.values())
