# SPDX-License-Identifier: Apache-2.0
"""Configuration: defaults, file, flags; every bad input a clear typed error."""

import pytest

from allocwatch import config
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S
from allocwatch.errors import ConfigError, ConfigUnreadable


def test_defaults_without_any_file():
    cfg = config.load(None, {})
    assert cfg.threshold_s == 10.0 and cfg.scan_interval_s == 1.0 and cfg.format == "text"
    assert cfg.thresholds().for_site(Site.MEMCG_RECLAIM) == 10 * NS_PER_S
    assert cfg.classify_after_ns == NS_PER_S


def test_file_then_flags_override(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("threshold_s: 5\nformat: json\nthresholds_s:\n  memcg_oom_wait: 2\ndisable_sites: [compaction]\n")
    cfg = config.load(f, {"threshold_s": 3.0, "format": None})
    assert cfg.threshold_s == 3.0 and cfg.format == "json"
    assert cfg.thresholds().for_site(Site.MEMCG_OOM_WAIT) == 2 * NS_PER_S
    assert cfg.disabled == [Site.COMPACTION]
    assert cfg.classify_after_ns == NS_PER_S  # min(1 s, lowest threshold 2 s)


def test_classify_age_never_after_lowest_threshold():
    assert config.load(None, {"threshold_s": 0.5}).classify_after_ns == NS_PER_S // 2


@pytest.mark.parametrize(
    "text,needle",
    [
        ("thresold_s: 5\n", "unknown key 'thresold_s'"),
        ("threshold_s: fast\n", "threshold_s: expected a positive number"),
        ("threshold_s: -1\n", "threshold_s: expected a positive number"),
        ("threshold_s: true\n", "threshold_s: expected a positive number"),
        ("format: xml\n", "format: expected 'text' or 'json'"),
        ("metrics_addr: nowhere\n", "metrics_addr: expected HOST:PORT"),
        ("thresholds_s: {bogus_site: 1}\n", "unknown wait site 'bogus_site'"),
        ("disable_sites: compaction\n", "disable_sites: expected a list"),
        ("hot_paths: 1\n", "hot_paths: expected true or false"),
        ("max_inflight: 10\n", "max_inflight: expected an integer"),
        ("socket_path: run/a.sock\n", "socket_path: expected an absolute path"),
        ("socket_path: /" + "a" * 107 + "\n", "socket_path: expected a file path of at most 107 bytes"),
        ("socket_path: 5\n", "socket_path: expected an absolute path"),
        ("socket_group: 'a b'\n", "socket_group: expected a group name"),
        ("socket_group: 0\n", "socket_group: expected a group name"),
        ("- a\n- b\n", "expected a mapping"),
        ("threshold_s: [\n", "not valid YAML"),
    ],
)
def test_bad_file_names_the_key(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        config.load(f, {})
    assert needle in str(exc.value) and str(f) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigUnreadable, match="cannot read config file"):
        config.load(tmp_path / "missing.yaml", {})


def test_bad_flag_value():
    with pytest.raises(ConfigError, match="command line: scan_interval_s"):
        config.load(None, {"scan_interval_s": 0.0})


def test_empty_file_is_defaults(tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert config.load(f, {}) == config.Config()


def test_metrics_addr_normalised():
    assert config.load(None, {"metrics_addr": ":9464"}).metrics_addr == "127.0.0.1:9464"


# --- numbers: type, finiteness and a documented range ------------------------------------------------------------


def _refused(overrides, needle, max_len=200):
    with pytest.raises(ConfigError) as exc:
        config.load(None, overrides)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and len(msg) < max_len, msg
    return msg


KNOWN_SITES = len(", ".join(s.label for s in Site))  # messages about site names list them all


THRESHOLD_RANGE = f"from {config.THRESHOLD_MIN_S:g} to {config.THRESHOLD_MAX_S:g}"


@pytest.mark.parametrize(
    "value,shown",
    [
        (0, "0"),
        (1e-12, "1e-12"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (1e30, "1e+30"),
        (10**400, "an integer of 1329 bits"),
        ("10", "'10'"),
        (True, "True"),
        (None, None),  # None from the command line means "not given": the default stays
    ],
)
def test_threshold_out_of_range_or_wrong_type(value, shown):
    if shown is None:
        assert config.load(None, {"threshold_s": value}).threshold_s == 10.0
        return
    msg = _refused({"threshold_s": value}, f"threshold_s: expected a positive number of seconds {THRESHOLD_RANGE}")
    assert msg.endswith(f"got {shown}")


def test_threshold_range_is_safe_for_the_bpf_define():
    assert (config.THRESHOLD_MIN_S, config.THRESHOLD_MAX_S) == (0.1, 86400.0)
    low = config.load(None, {"threshold_s": config.THRESHOLD_MIN_S}).thresholds().min_ns
    high = config.load(None, {"threshold_s": config.THRESHOLD_MAX_S}).thresholds().min_ns
    assert low == 100_000_000 and high == 86_400 * NS_PER_S < 2**63  # LONG_WAIT_NS=<ns>ULL never overflows


@pytest.mark.parametrize("text", ["thresholds_s: {oom: .nan}\n", "thresholds_s: {oom: 1.0e+30}\n"])
def test_per_site_threshold_checked_like_the_default(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        config.load(f, {})
    assert f"thresholds_s.oom: expected a positive number of seconds {THRESHOLD_RANGE}" in str(exc.value)
    _refused({"thresholds_s": {"oom": float("nan")}}, "thresholds_s.oom: expected")


@pytest.mark.parametrize("value", [1e-9, float("nan"), float("inf"), 1e9, 0.0, -1])
def test_scan_interval_range(value):
    assert (config.SCAN_INTERVAL_MIN_S, config.SCAN_INTERVAL_MAX_S) == (0.05, 60.0)
    _refused(
        {"scan_interval_s": value},
        "command line: scan_interval_s: expected a positive number of seconds from 0.05 to 60,",
    )


def test_scan_interval_bounds_accepted():
    assert config.load(None, {"scan_interval_s": 0.05}).scan_interval_s == 0.05
    assert config.load(None, {"scan_interval_s": 60}).scan_interval_s == 60.0


def test_classify_after_nan_from_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("classify_after_s: .nan\n")
    with pytest.raises(ConfigError) as exc:
        config.load(f, {})
    assert "classify_after_s: expected a positive number of seconds from 0.01 to 86400, got nan" in str(exc.value)
    assert (config.CLASSIFY_AFTER_MIN_S, config.CLASSIFY_AFTER_MAX_S) == (0.01, 86400.0)


@pytest.mark.parametrize("value", [1023, 4194305, 1024.5, True, float("nan"), "2048"])
def test_max_inflight_integer_range(value):
    _refused({"max_inflight": value}, "max_inflight: expected an integer from 1024 to 4194304")


def test_max_inflight_bounds_accepted():
    assert config.load(None, {"max_inflight": config.MAX_INFLIGHT_MIN}).max_inflight == 1024
    assert config.load(None, {"max_inflight": config.MAX_INFLIGHT_MAX}).max_inflight == 4194304


# --- metrics_addr ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,normal",
    [
        ("[::1]:9464", "[::1]:9464"),
        ("[0:0::1]:9464", "[::1]:9464"),
        (":9464", "127.0.0.1:9464"),
        ("0.0.0.0:80", "0.0.0.0:80"),
        ("localhost:09464", "localhost:9464"),
        ("metrics-1.example.org:65535", "metrics-1.example.org:65535"),
        ("", ""),  # metrics off
    ],
)
def test_metrics_addr_accepted_and_normalised(value, normal):
    assert config.load(None, {"metrics_addr": value}).metrics_addr == normal


def test_metrics_addr_not_given_is_none():
    assert config.load(None, {}).metrics_addr is None
    assert config.load(None, {"metrics_addr": None}).metrics_addr is None


@pytest.mark.parametrize(
    "value,needle",
    [
        (":\u00b2", "a port from 1 to 65535"),  # superscript two: str.isdigit() says yes
        (":\u0661\u0662", "a port from 1 to 65535"),  # Arabic-Indic digits
        (":9464\u00b2", "a port from 1 to 65535"),
        (":" + "9" * 5000, "a port from 1 to 65535"),  # cut: see test_metrics_addr_huge_port_not_echoed
        (":0", "a port from 1 to 65535"),
        (":65536", "a port from 1 to 65535"),
        ("host:", "a port from 1 to 65535"),
        ("nowhere", "expected HOST:PORT"),
        ("a b:9", "ASCII host name"),
        ("host\n:9", "ASCII host name"),
        ("h\u00e9:9", "ASCII host name"),
        ("-a:9", "ASCII host name"),
        ("a..b:9", "ASCII host name"),
        ("a" * 254 + ":9", "at most 253 characters"),
        ("1.2.3.999:9", "IPv4 address"),
        ("0x7f.1:9", "IPv4 address"),  # a host name to the pattern; 127.0.0.1 to the resolver
        ("0x0:9", "IPv4 address"),  # 0.0.0.0: every interface
        ("0x7f000001:9", "IPv4 address"),
        ("::1:9", "[IPv6 address]"),  # IPv6 needs brackets
        ("[1.2.3.4]:9", "[IPv6 address]"),
        ("[::1%a b]:9", "[IPv6 address]"),
        ("[nonsense]:9", "[IPv6 address]"),
        (9464, "expected HOST:PORT"),
    ],
)
def test_metrics_addr_refused(value, needle):
    msg = _refused({"metrics_addr": value}, "command line: metrics_addr: expected HOST:PORT", 300)
    assert needle in msg
    assert "9" * 100 not in msg and "a" * 100 not in msg


def test_metrics_addr_huge_port_not_echoed():
    msg = _refused({"metrics_addr": ":" + "9" * 5000}, "metrics_addr: expected HOST:PORT with a port from 1 to 65535")
    assert len(msg) < 200 and msg.endswith("...")


# --- site names: exact labels only -------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["OOM", "Oom", "d\u0131rect_reclaim", "memcg_\u017foftlimit_reclaim", "oom ", ""])
def test_site_label_must_match_exactly(label):
    with pytest.raises(ValueError, match="unknown wait site"):
        Site.from_label(label)
    _refused({"disable_sites": [label]}, "disable_sites: unknown wait site", 200 + KNOWN_SITES)
    _refused({"thresholds_s": {label: 1}}, "thresholds_s: unknown wait site", 200 + KNOWN_SITES)


def test_site_lookalikes_were_what_upper_case_folding_let_through():
    assert "d\u0131rect_reclaim".upper() == "DIRECT_RECLAIM"  # dotless i
    assert "memcg_\u017foftlimit_reclaim".upper() == "MEMCG_SOFTLIMIT_RECLAIM"  # long s


def test_site_label_exact_lower_case_accepted():
    assert Site.from_label("oom") is Site.OOM
    assert all(Site.from_label(s.label) is s for s in Site)
    assert config.load(None, {"disable_sites": ["oom"]}).disabled == [Site.OOM]


@pytest.mark.parametrize("label", [17, None, b"oom", ["oom"]])
def test_site_label_not_a_string(label):
    with pytest.raises(ValueError):
        Site.from_label(label)
    _refused({"disable_sites": [label]}, "disable_sites: unknown wait site", 200 + KNOWN_SITES)


# --- messages never quote a whole untrusted value ----------------------------------------------------------------


def test_shown_cuts_long_and_large_values():
    long = config.shown("x" * 10_000)
    assert long.startswith("'xxx") and long.endswith("...") and len(long) <= config.SHOWN_MAX_CHARS
    assert config.shown([1, 2, 3]) == "a list of 3 items"
    assert config.shown({"a": 1}) == "a mapping of 1 item"
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert config.shown(deep) == "a list of 1 item"  # no repr of the nested structure
    assert config.shown("a\nb") == "'a\\nb'"
    assert config.shown(10**5000) == "an integer of 16610 bits"


def test_unknown_key_is_cut():
    msg = _refused({"k" * 5000: 1}, "unknown key 'kkk", 700)  # the key is cut; the list of known keys grows
    assert "k" * 100 not in msg


def test_socket_keys_accept_a_path_a_group_and_off():
    cfg = config.load(None, {})
    assert (cfg.socket_path, cfg.socket_group) == ("/run/allocwatch/allocwatch.sock", "")
    cfg = config.from_mapping({"socket_path": "", "socket_group": "allocwatch"})
    assert (cfg.socket_path, cfg.socket_group) == ("", "allocwatch")
