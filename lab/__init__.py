# SPDX-License-Identifier: Apache-2.0
"""The lab: recipes that put this machine under real memory pressure, shared by
the kernel tests (tests/kernel, tests/guest) and the benchmarks (bench/).

Each recipe makes its machine state and undoes it on exit, also when the body
fails: `memcg` (child memory cgroups, v1 or v2, and memory hogs held in a
memory wait), `slowdisk` (a loop device behind a blkio write throttle, dirty
page limits), `recipes` (whole stalls built from those), `ports` (a free
loopback port). The standard library and, for reading mountinfo,
allocwatch.kernel.mountinfo: no pytest.
Test fixtures and the daemon's harness stay in tests/.
"""
