# SPDX-License-Identifier: Apache-2.0
"""Configuration files: hostile or broken files are refused with one line
(ConfigError, exit 3; ConfigUnreadable, exit 4), quickly and in bounded memory."""

import os
import stat
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from allocwatch import cli, config
from allocwatch.config import yamlfile
from allocwatch.errors import ConfigError, ConfigUnreadable

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def write(tmp_path: Path, content: str | bytes, name: str = "c.yaml") -> Path:
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    return f


def refused(path: Path, kind: type[Exception], needle: str) -> str:
    with pytest.raises(kind) as exc:
        config.load(path, {})
    msg = str(exc.value)
    assert needle in msg, msg
    assert "\n" not in msg and len(msg) < 600, msg  # one line; the list of known keys grows
    return msg


def run_cli(capsys, path: Path) -> tuple[int, str]:
    code = cli.main(["run", "--config", str(path)])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err  # exactly one line, no traceback
    return code, err


def finishes_within(seconds: float, fn):
    """Run fn in a thread; fail (rather than hang the suite) if it blocks."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds}s"
    assert time.monotonic() - start < seconds
    if "error" in box:
        raise box["error"]
    return box.get("result")


# --- YAML structure -----------------------------------------------------------------------------------------------


def test_billion_laughs_refused_quickly_in_bounded_memory(tmp_path, capsys):
    assert len(BILLION_LAUGHS) < 500 and BILLION_LAUGHS.count("*") == 72
    f = write(tmp_path, BILLION_LAUGHS)
    tracemalloc.start()
    try:
        start = time.monotonic()
        msg = refused(f, ConfigError, "YAML aliases and anchors are not allowed (line 1)")
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1 and peak < 5 << 20 and str(f) in msg
    assert run_cli(capsys, f)[0] == 3


def test_anchor_without_alias_refused(tmp_path):
    refused(
        write(tmp_path, "threshold_s: 5\nformat: &f text\n"),
        ConfigError,
        "aliases and anchors are not allowed (line 2)",
    )


def test_merge_key_refused(tmp_path):
    refused(write(tmp_path, "thresholds_s: {<<: {oom: 1}}\n"), ConfigError, "merge keys (<<) are not allowed")


def test_duplicate_top_level_key_refused(tmp_path, capsys):
    f = write(tmp_path, "threshold_s: 5\nformat: text\nthreshold_s: 50\n")
    refused(f, ConfigError, "duplicate key 'threshold_s' at line 3 (first at line 1)")
    assert run_cli(capsys, f)[0] == 3


def test_duplicate_nested_key_refused(tmp_path):
    f = write(tmp_path, "thresholds_s:\n  oom: 1\n  memcg_oom_wait: 2\n  oom: 3\n")
    refused(f, ConfigError, "duplicate key 'oom' at line 4 (first at line 2)")


def test_duplicate_long_key_is_cut(tmp_path):
    key = "k" * 900
    msg = refused(write(tmp_path, f'"{key}": 1\n"{key}": 2\n'), ConfigError, "duplicate key 'kkk")
    assert key not in msg


def test_deep_brackets_one_line_no_recursion_error(tmp_path, capsys):
    f = write(tmp_path, "[" * 100_000)
    refused(f, ConfigError, f"YAML nested deeper than {config.YAML_MAX_DEPTH} levels")
    assert run_cli(capsys, f)[0] == 3


def test_nesting_limit_is_exact(tmp_path):
    depth = config.YAML_MAX_DEPTH
    ok = "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"  # the top-level mapping is level 1
    assert "nested" not in refused(write(tmp_path, ok), ConfigError, "unknown key 'a'")
    deep = "a: " + "[" * depth + "]" * depth + "\n"
    refused(write(tmp_path, deep), ConfigError, "nested deeper than 16 levels")


def test_too_many_values_refused(tmp_path):
    f = write(tmp_path, "disable_sites: [" + "oom, " * config.YAML_MAX_NODES + "oom]\n")
    refused(f, ConfigError, f"YAML has more than {config.YAML_MAX_NODES} values")


def test_long_number_literal_refused(tmp_path):
    refused(write(tmp_path, "threshold_s: " + "9" * 5000 + "\n"), ConfigError, "YAML number longer than 64 characters")
    refused(write(tmp_path, "threshold_s: 1" + ":1" * 50_000 + "\n"), ConfigError, "YAML number longer than")


def test_non_string_top_level_key_refused(tmp_path):
    refused(write(tmp_path, "1: 2\n"), ConfigError, "top-level keys must be strings, got 1")


def test_tab_indentation_is_one_line(tmp_path):
    refused(write(tmp_path, "\tthreshold_s: 5\n"), ConfigError, "not valid YAML: found character '\\t'")


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f"])
def test_control_characters_are_one_line(tmp_path, char):
    refused(write(tmp_path, f"threshold_s: 5{char}\n"), ConfigError, "is not allowed (character offset 14)")


def test_python_tag_refused(tmp_path):
    refused(write(tmp_path, "threshold_s: !!python/object/apply:os.system [x]\n"), ConfigError, "not valid YAML")


def test_impossible_date_is_one_line(tmp_path):
    refused(write(tmp_path, "threshold_s: 2024-02-30\n"), ConfigError, "not valid YAML: a value could not be built")


# --- bytes and encodings ------------------------------------------------------------------------------------------


def test_binary_bytes_refused(tmp_path, capsys):
    f = write(tmp_path, b"\xff\xfe\x00")
    refused(f, ConfigError, "not UTF-8 text (byte 0xff at offset 0)")
    assert run_cli(capsys, f)[0] == 3


def test_latin1_refused(tmp_path):
    refused(write(tmp_path, b"tracefs: caf\xe9\n"), ConfigError, "not UTF-8 text (byte 0xe9 at offset 12)")


def test_utf8_bom_and_crlf_accepted(tmp_path):
    assert config.load(write(tmp_path, b"\xef\xbb\xbfthreshold_s: 5\r\n"), {}).threshold_s == 5.0


# --- what is opened, and how much is read -------------------------------------------------------------------------


def test_file_of_exactly_the_cap_accepted(tmp_path):
    f = write(tmp_path, "#" + "x" * (config.CONFIG_MAX_BYTES - 2) + "\n")
    assert f.stat().st_size == config.CONFIG_MAX_BYTES == 1 << 20
    assert config.load(f, {}) == config.Config()


def test_two_mib_file_refused_as_too_large(tmp_path, capsys):
    f = write(tmp_path, "#" * (2 << 20))
    refused(f, ConfigUnreadable, f"larger than the 1 MiB limit ({config.CONFIG_MAX_BYTES} bytes)")
    assert run_cli(capsys, f)[0] == 4


def test_file_that_grows_after_fstat_is_cut_at_the_cap(tmp_path, monkeypatch):
    f = write(tmp_path, "#" * (2 << 20))
    real_fstat = os.fstat

    def small_fstat(fd):
        st = list(real_fstat(fd))
        st[stat.ST_SIZE] = 10
        return os.stat_result(st)

    monkeypatch.setattr(yamlfile.os, "fstat", small_fstat)
    refused(f, ConfigUnreadable, "larger than the 1 MiB limit")


def test_fifo_without_writer_refused_within_a_second(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    finishes_within(1.0, lambda: refused(fifo, ConfigUnreadable, "not a regular file"))
    assert finishes_within(1.0, lambda: run_cli(capsys, fifo))[0] == 4


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_file_caught_after_open_too(tmp_path, monkeypatch, kind):
    """Should the path be swapped between the stat and the open, the fstat of
    the opened file still refuses it, and opening a FIFO does not block."""
    if kind == "fifo":
        target = tmp_path / "fifo.yaml"
        os.mkfifo(target)
    else:
        target = Path("/dev/zero")
    regular = write(tmp_path, "threshold_s: 5\n", "regular.yaml")
    real_stat = os.stat
    monkeypatch.setattr(
        yamlfile.os, "stat", lambda p, *a, **k: real_stat(regular) if p == target else real_stat(p, *a, **k)
    )
    finishes_within(1.0, lambda: refused(target, ConfigUnreadable, "not a regular file"))


def test_dev_zero_refused(capsys):
    dev_zero = Path("/dev/zero")
    finishes_within(1.0, lambda: refused(dev_zero, ConfigUnreadable, "not a regular file"))
    assert run_cli(capsys, dev_zero)[0] == 4


def test_directory_refused(tmp_path, capsys):
    refused(tmp_path, ConfigUnreadable, "not a regular file")
    assert run_cli(capsys, tmp_path)[0] == 4


def test_missing_file_unreadable(tmp_path):
    refused(tmp_path / "missing.yaml", ConfigUnreadable, "No such file or directory")


def test_permission_denied_unreadable(tmp_path, monkeypatch):
    f = write(tmp_path, "threshold_s: 5\n")

    def denied(*_a, **_k):  # root reads any file: the refusal is simulated at open(2)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(yamlfile.os, "open", denied)
    refused(f, ConfigUnreadable, "Permission denied")


# --- values from a file, through the CLI --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,needle",
    [
        ("threshold_s: .nan\n", "threshold_s: expected a positive number of seconds from 0.1 to 86400, got nan"),
        ("threshold_s: .inf\n", "threshold_s: expected a positive number of seconds from 0.1 to 86400, got inf"),
        ("threshold_s: 1.0e+30\n", "got 1e+30"),
        ("threshold_s: 0\n", "got 0"),
        ('threshold_s: "10"\n', "got '10'"),
        ("threshold_s: true\n", "got True"),
        ("scan_interval_s: 1.0e-9\n", "scan_interval_s: expected a positive number of seconds from 0.05 to 60"),
        ("metrics_addr: ':\u00b2'\n", "metrics_addr: expected HOST:PORT with a port from 1 to 65535"),
        ("metrics_addr: ':" + "9" * 5000 + "'\n", "metrics_addr: expected HOST:PORT with a port from 1 to 65535"),
        ("disable_sites: [OOM]\n", "disable_sites: unknown wait site 'OOM'"),
        ("thresholds_s: {d\u0131rect_reclaim: 1}\n", "thresholds_s: unknown wait site 'd\u0131rect_reclaim'"),
    ],
)
def test_bad_values_via_cli_exit_3_one_line(tmp_path, capsys, text, needle):
    f = write(tmp_path, text)
    code, err = run_cli(capsys, f)
    assert code == 3 and needle in err and "9" * 100 not in err


def test_metrics_off_and_normalised_from_file(tmp_path):
    assert config.load(write(tmp_path, "metrics_addr: ''\n"), {}).metrics_addr == ""
    assert config.load(write(tmp_path, "metrics_addr: ':9464'\n"), {}).metrics_addr == "127.0.0.1:9464"
    assert config.load(write(tmp_path, "metrics_addr: '[::1]:9464'\n"), {}).metrics_addr == "[::1]:9464"
    assert config.load(write(tmp_path, "disable_sites: [oom]\n"), {}).disable_sites == ("oom",)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--threshold", "nan"], "command line: threshold_s: expected a positive number of seconds from 0.1 to 86400"),
        (["--threshold", "1e30"], "got 1e+30"),
        (["--scan-interval", "inf"], "scan_interval_s: expected a positive number of seconds from 0.05 to 60, got inf"),
        (["--metrics-addr", ":" + "9" * 5000], "metrics_addr: expected HOST:PORT with a port from 1 to 65535"),
        (["--metrics-addr", ":\u0661\u0662"], "metrics_addr: expected HOST:PORT with a port from 1 to 65535"),
        (["--metrics-addr", "host\n:9"], "metrics_addr: expected HOST:PORT with HOST"),
    ],
)
def test_bad_flags_exit_3_one_line(capsys, argv, needle):
    code = cli.main(["run", *argv])
    err = capsys.readouterr().err
    assert code == 3 and needle in err and len(err.splitlines()) == 1 and len(err) < 300, err
