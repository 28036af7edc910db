"""Configuration from a TOML file, STREAMIMG_* variables and flags (issue 10).

Precedence: a flag beats a variable, which beats the file, which beats the built-in
default. Real `streamimg` subprocesses (`run --check` against the session broker, which
builds every Kafka client the daemon opens and changes nothing), each with an environment
cleared of STREAMIMG_* variables but those the test sets; plus the parser itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from streamimg.admin import connect, ensure_topics, read_topic
from streamimg.broker import free_port
from streamimg.cli import _kafka, build_parser
from streamimg.settings import apply_settings, kafka_key, merge_kafka
from tests.helpers import ROOT, write_topology

pytestmark = pytest.mark.timeout(300)


def streamimg(*args, env=None, timeout=120):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMIMG_")}
    return subprocess.run([sys.executable, "-m", "streamimg.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**clean, **(env or {})})


def error_line(done, command: str = "run") -> str:
    """The one line the command printed for its error; no traceback, no librdkafka output."""
    assert "Traceback" not in done.stderr and "%3|" not in done.stderr, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith(f"streamimg {command}:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def toml(path, text: str):
    path.write_text(text)
    return str(path)


@pytest.fixture
def topology(kafka, uid, tmp_path):
    """A topology whose input exists: `run --check` passes against the session broker."""
    ensure_topics(kafka, [f"in-{uid}"])
    return str(write_topology(tmp_path / "t.py", f"cfg-{uid}", f"in-{uid}",
                              ".to_kafka_analytics()"))


def test_file_then_environment_then_flags(kafka, uid, topology, tmp_path):
    name = f"cfg-{uid}"
    config = toml(tmp_path / "streamimg.toml", f"""
bootstrap = "{kafka.bootstrap}"
connect-timeout = 20
instance = "top"          # the [run] table overrides the top level

[run]
group = "group-file"
instance = "file"

[produce]                 # another command's table: keys checked, values not used here
encoding = "png"
""")
    check = ["run", topology, "--check"]

    done = streamimg(*check, "--config", config)  # no --bootstrap: the file's
    assert done.returncode == 0, done.stderr
    assert f"Kafka at {kafka.bootstrap} answers" in done.stdout
    assert f"group group-file, transactional.id {name}-file" in done.stdout

    env = {"STREAMIMG_CONFIG": config, "STREAMIMG_GROUP": "group-env"}  # the file by variable
    done = streamimg(*check, env=env)
    assert done.returncode == 0, done.stderr
    assert f"group group-env, transactional.id {name}-file" in done.stdout

    done = streamimg(*check, "--group", "group-flag", "--instance", "7", env=env)
    assert done.returncode == 0, done.stderr
    assert f"group group-flag, transactional.id {name}-7" in done.stdout

    # --config beats $STREAMIMG_CONFIG: this file sends the probe to a closed port.
    down = f"127.0.0.1:{free_port()}"
    other = toml(tmp_path / "other.toml", f'bootstrap = "{down}"\nconnect-timeout = 1\n')
    done = streamimg(*check, "--config", other, env=env)
    assert done.returncode == 4 and f"no Kafka broker answered at {down} within 1 s" in (
        error_line(done))


def test_kafka_settings_from_file_and_environment_reach_every_client(kafka, topology,
                                                                    tmp_path):
    base = ["run", topology, "--check", "--bootstrap", kafka.bootstrap, "--connect-timeout", "3"]
    # The first client, the broker probe: TLS against a plaintext listener fails there.
    ssl = toml(tmp_path / "ssl.toml", '[kafka]\n"security.protocol" = "SSL"\n')
    for args, env in ((["--config", ssl], None),
                      ([], {"STREAMIMG_KAFKA_SECURITY_PROTOCOL": "SSL"})):
        done = streamimg(*base, *args, env=env)
        assert done.returncode == 4, (args, env, done.stderr)
        assert "no Kafka broker answered" in error_line(done)
    done = streamimg(*base, "--config", ssl, "--kafka", "security.protocol=PLAINTEXT")
    assert done.returncode == 0, done.stderr  # the flag overrides the file

    # The consumer and the producer: librdkafka refuses what it does not know, named,
    # exactly as for --kafka (test_daemon_ops).
    unknown = toml(tmp_path / "unknown.toml", '[kafka]\n"no.such.setting" = 1\n')
    done = streamimg(*base, "--config", unknown)
    assert done.returncode == 2
    assert 'No such configuration property: "no.such.setting"' in error_line(done)
    bad = toml(tmp_path / "bad.toml", '[kafka]\nfetch.wait.max.ms = "soon"\n'  # unquoted: ok
                                      '"socket.keepalive.enable" = true\n')
    done = streamimg(*base, "--config", bad)
    assert done.returncode == 2 and '"fetch.wait.max.ms"' in error_line(done)
    done = streamimg(*base, env={"STREAMIMG_KAFKA_FETCH_WAIT_MAX_MS": "later"})
    assert done.returncode == 2 and '"fetch.wait.max.ms"' in error_line(done)

    # Keys merge; the same key: the variable beats the file, the flag beats both.
    env = {"STREAMIMG_CONFIG": bad, "STREAMIMG_KAFKA_FETCH_WAIT_MAX_MS": "20",
           "STREAMIMG_KAFKA_CLIENT_ID": "cfg-test"}
    done = streamimg(*base, env=env)
    assert done.returncode == 0, done.stderr
    assert "3 --kafka setting(s) accepted" in done.stdout  # fetch, keepalive, client.id
    done = streamimg(*base, "--kafka", "fetch.wait.max.ms=soon", env=env)
    assert done.returncode == 2 and '"fetch.wait.max.ms"' in error_line(done)


def test_unknown_keys_and_bad_values_fail_before_anything_connects(tmp_path):
    topo = str(write_topology(tmp_path / "t.py", "cfg-bad", "in-bad", ".to_kafka_analytics()"))
    down = f"127.0.0.1:{free_port()}"  # nothing listens: a connection attempt would be exit 4
    run = ["run", topo, "--bootstrap", down, "--connect-timeout", "1"]
    assert streamimg(*run).returncode == 4  # without a configuration error

    def fails(text: str | None, env: dict | None, expected: str) -> None:
        args = ["--config", toml(tmp_path / "c.toml", text)] if text is not None else []
        done = streamimg(*run, *args, env=env, timeout=60)
        assert done.returncode == 2, (text, env, done.stderr)
        line = error_line(done)
        assert line == f"streamimg run: {expected}", line
        assert "no Kafka broker answered" not in done.stderr

    path = str(tmp_path / "c.toml")
    fails("metrics_prot = 9100\n", None,
          f"{path}: unknown key 'metrics_prot' (did you mean 'metrics-port'?)")
    fails("[run]\nwokers = 2\n", None,
          f"{path} [run]: unknown key 'wokers' (did you mean 'workers'?)")
    fails("[run]\n\"sasl.mechanism\" = \"PLAIN\"\n", None,
          f"{path} [run]: unknown key 'sasl.mechanism' (librdkafka settings go in [kafka])")
    fails("[produce]\nmetrics-port = 1\n", None,  # another command's table is checked too
          f"{path} [produce]: unknown key 'metrics-port' (an option of [run] only)")
    fails("[rnu]\nworkers = 2\n", None, f"{path}: unknown table [rnu] (did you mean 'run'?)")
    fails("[run]\nworkers = \"two\"\n", None,
          f"{path} [run]: workers = 'two': not an integer (give a whole number)")
    fails("[run]\nlog-format = \"xml\"\n", None,
          f"{path} [run]: log-format = 'xml': not one of text, json")
    fails("[kafka]\n\"sasl.mechanisms\" = [\"PLAIN\"]\n", None,
          f"{path} [kafka]: 'sasl.mechanisms' = ['PLAIN']: not a string, number or boolean "
          "(a librdkafka list is one string, comma-separated)")
    fails("workers = \n", None, f"{path}: not valid TOML (Invalid value (at line 1, column 11))")
    fails(None, {"STREAMIMG_WOKRERS": "2"},
          "unknown environment variable STREAMIMG_WOKRERS (did you mean 'STREAMIMG_WORKERS'?)")
    fails(None, {"STREAMIMG_WORKERS": "two"},
          "STREAMIMG_WORKERS='two': not an integer (give a whole number)")
    fails(None, {"STREAMIMG_CREATE_TOPICS": "maybe"},
          "STREAMIMG_CREATE_TOPICS='maybe': not a boolean (give true or false, 1 or 0, yes or no)")
    fails(None, {"STREAMIMG_KAFKA": "sasl.mechanism=PLAIN"},
          "environment variable STREAMIMG_KAFKA: not an option (give each librdkafka setting "
          "as STREAMIMG_KAFKA_<KEY>, e.g. STREAMIMG_KAFKA_SASL_MECHANISM=PLAIN)")
    fails(None, {"STREAMIMG_CONFIG": str(tmp_path / "missing.toml")},
          f"STREAMIMG_CONFIG {tmp_path / 'missing.toml'}: no such file "
          "(give the path of a TOML configuration file)")
    # A bad variable fails even when a flag overrides it; -v adds the traceback.
    done = streamimg(*run, "--workers", "2", env={"STREAMIMG_WORKERS": "two"})
    assert done.returncode == 2 and "STREAMIMG_WORKERS='two'" in error_line(done)
    done = streamimg("-v", *run, env={"STREAMIMG_WORKERS": "two"})
    assert done.returncode == 2 and "Traceback" in done.stderr
    # --help is not stopped by a bad setting.
    done = streamimg("run", "--help", env={"STREAMIMG_WORKERS": "two"}, timeout=60)
    assert done.returncode == 0 and "--config FILE" in done.stdout


def test_internal_and_other_commands_variables_are_not_errors(tmp_path):
    env = {"STREAMIMG_CHAOS": "1", "STREAMIMG_FENCE_CHECK_S": "20",
           "STREAMIMG_TOPIC": "t",            # an option of produce, not of run
           "STREAMIMG_CONNECT_TIMEOUT": "1"}
    topo = str(write_topology(tmp_path / "t.py", "cfg-int", "in-int", ".to_kafka_analytics()"))
    done = streamimg("run", topo, "--bootstrap", f"127.0.0.1:{free_port()}", env=env)
    assert done.returncode == 4  # past the settings, to the (closed) broker
    assert "within 1 s" in error_line(done)


def test_required_option_from_the_file(kafka, uid, tmp_path):
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((3, 4), 7, np.uint8)).save(image)
    topic = f"pixels-{uid}"
    config = toml(tmp_path / "c.toml", f'bootstrap = "{kafka.bootstrap}"\n'
                                       f'[produce-pixels]\ntopic = "{topic}"\nbinary = false\n')
    done = streamimg("produce-pixels", str(image), "--config", config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["topic"] == topic and topic in connect(kafka)
    assert len(list(read_topic(kafka, topic, timeout_s=30))) == 12


def parsed(argv, environ):
    parser = build_parser()
    config = apply_settings(parser, argv, environ)
    args = parser.parse_args(argv)
    args.kafka = merge_kafka(getattr(args, "kafka", None))
    return config, args


def test_values_are_converted_as_their_flags(tmp_path):
    config = toml(tmp_path / "c.toml", """
connect-timeout = 3           # an integer for a float option
verbose = true
[run]
processes = "yes"
metrics_port = "9100"
[kafka]
"session.timeout.ms" = 9000
""")
    env = {"STREAMIMG_CONFIG": config, "STREAMIMG_VERBOSE": "off", "STREAMIMG_CHECK": "1",
           "STREAMIMG_KAFKA_SSL_CA_LOCATION": "/ca.pem"}
    path, args = parsed(["run", "t.py"], env)
    assert path == config
    assert (args.connect_timeout, args.processes, args.metrics_port, args.check,
            args.verbose) == (3.0, True, 9100, True, False)
    assert args.kafka == ["session.timeout.ms=9000", "ssl.ca.location=/ca.pem"]
    kafka = _kafka(args)  # the same KafkaConfig as from --kafka flags
    assert kafka.session_timeout_ms == 9000 and kafka.common()["ssl.ca.location"] == "/ca.pem"
    # Flags still win, in either position of -v.
    _, args = parsed(["-v", "run", "t.py", "--metrics-port", "0", "--kafka",
                      "ssl.ca.location=/x.pem", "--kafka", "client.id=c"], env)
    assert args.verbose and args.metrics_port == 0
    assert args.kafka == ["session.timeout.ms=9000", "ssl.ca.location=/x.pem", "client.id=c"]
    # Nothing set: the built-in defaults, untouched.
    assert parsed(["run", "t.py"], {})[1] == build_parser().parse_args(["run", "t.py"])


def test_kafka_variable_names():
    assert kafka_key("STREAMIMG_KAFKA_SASL_MECHANISM") == "sasl.mechanism"
    assert kafka_key("STREAMIMG_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM") == (
        "ssl.endpoint.identification.algorithm")
    assert kafka_key("STREAMIMG_KAFKA_A__B___C") == "a_b-c"
    assert merge_kafka(["a=1", "b=2", "a=3", "junk"]) == ["a=3", "b=2", "junk"]
