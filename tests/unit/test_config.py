"""Configuration: defaults, file, flags; every bad input a clear typed error."""

import pytest

from allocwatch import config
from allocwatch.errors import ConfigError, ConfigUnreadable
from allocwatch.sites import Site
from allocwatch.tracker import NS_PER_S


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
