"""The README's promises that code can check: the exit-code table matches the
typed errors, and every metric the collector serves is in the metrics table."""

from __future__ import annotations

import re
from pathlib import Path

from allocwatch import errors

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    nxt = README.find("\n#", start + len(title))
    return README[start : nxt if nxt != -1 else None]


def test_exit_code_table_matches_the_code():
    table = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", _section("### Exit codes"), re.M)}
    codes = {errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_USAGE}
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.AllocwatchError) and cls is not errors.AllocwatchError:
            codes.add(cls.exit_code)
    assert table == codes
    distinct = [c.exit_code for c in vars(errors).values() if isinstance(c, type)
                and issubclass(c, errors.AllocwatchError) and c is not errors.AllocwatchError]
    assert len(distinct) == len(set(distinct)), "two errors share an exit code"


def test_metrics_table_lists_every_family(tmp_path):
    from prometheus_client import generate_latest

    from allocwatch.outputs.metrics import SnapshotCollector, registry_for
    from tests.unit.test_snapshot_metrics import _daemon

    d, src, *_ = _daemon(tmp_path)
    src.program_stats = lambda: {"aw_sched_switch": (1500, 10)}  # as while the kernel counts
    d.scan_once()
    text = generate_latest(registry_for(SnapshotCollector(lambda: d.latest, lambda: {"stdout": 0}))).decode()
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    documented = set(re.findall(r"^\| `(allocwatch_\w+)` \|", _section("## Metrics"), re.M))
    # a counter family is served as NAME and documented as NAME_total
    served = {n if n in documented else n + "_total" for n in served}
    assert served == documented
