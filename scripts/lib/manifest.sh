# SPDX-License-Identifier: Apache-2.0
# What scripts/install made, for scripts/install and scripts/uninstall (sourced, not run).
#
# The manifest, /opt/allocwatch/install-manifest, has one entry a line, tab-separated:
#   f <TAB> sha256 <TAB> PATH    a file install wrote, with its checksum then
#   l <TAB> target <TAB> PATH    a symbolic link install made, with where it points
#   d <TAB> -      <TAB> PATH    a directory install made (removed only when empty)
# PATH is as installed: absolute, without the DESTDIR. Lines starting with # are comments.
# An entry is "ours" while the path is still what the entry says; a file changed since
# (or a link pointing elsewhere) is the user's.
#
# Nothing here follows a symbolic link out of the root: a path whose directory resolves
# outside it is never read, written or removed, and find(1) never follows a link.

# awk is a link that Debian's alternatives keep under /etc: a root without that /etc (a volatile
# container of this /usr) has mawk alone.
if ! command -v awk >/dev/null; then
  awk() { if command -v mawk >/dev/null; then mawk "$@"; else gawk "$@"; fi; }
fi

OPT=/opt/allocwatch
MANIFEST=$OPT/install-manifest
ROOT=""       # the DESTDIR, without a trailing slash; empty for the machine itself
ROOT_REAL=/   # the same, with every symbolic link resolved

# set_root DIR: install under DIR instead of /
set_root() {
  ROOT_REAL=$(realpath -e -- "${1:-/}")
  if [ "$ROOT_REAL" = / ]; then ROOT=""; else ROOT=$ROOT_REAL; fi
}

# paths_inside: of the paths read on stdin (as installed, one a line), print those whose
# directory resolves inside the root, so that no symbolic link on the way leads out of it.
paths_inside() {
  if [ -z "$ROOT" ]; then cat; return; fi
  local paths=() dirs=() p
  mapfile -t paths
  [ ${#paths[@]} -gt 0 ] || return 0
  for p in "${paths[@]}"; do dirs+=("$ROOT${p%/*}"); done
  paste -d '\t' <(printf '%s\n' "${paths[@]}") <(realpath -m -- "${dirs[@]}") |
    awk -F'\t' -v root="$ROOT_REAL" '$2 == root || index($2, root "/") == 1 { print $1 }'
}

# inside PATH: whether PATH's directory resolves inside the root
inside() { [ -n "$(printf '%s\n' "$1" | paths_inside)" ]; }

# entries_now [-r]: the entry each path read on stdin has now, as a manifest line (type o
# for anything not a file, a link or a directory; nothing for a path that is not there).
# With -r, also everything under it. Give it only paths that paths_inside kept.
entries_now() {
  local depth=(-maxdepth 0) rel=() p
  [ "${1:-}" = -r ] && depth=()
  while IFS= read -r p; do rel+=(".$p"); done
  [ ${#rel[@]} -gt 0 ] || return 0
  ( cd "${ROOT:-/}" &&
    { find "${rel[@]}" "${depth[@]}" ! -type f -printf '%y\t%l\t%p\n' 2>/dev/null || true
      find "${rel[@]}" "${depth[@]}" -type f -exec sha256sum -- {} + 2>/dev/null |
        sed 's/^\([0-9a-f]\{64\}\)  /f\t\1\t/' || true; } ) |
    awk -F'\t' -v OFS='\t' '{
      t = $1; v = $2; p = substr($3, 2)
      if (t == "d") v = "-"; else if (t != "f" && t != "l") { t = "o"; v = "-" }
      print t, v, p }'
}

# read_manifest FILE: its entries, comments left out; a malformed line ends the script (exit 1)
read_manifest() {
  awk -F'\t' -v file="$1" -v me="${0##*/}" '
    /^#/ || /^$/ { next }
    NF != 3 || $1 !~ /^[fld]$/ || $3 !~ /^\// || $3 ~ /(^|\/)\.\.?(\/|$)/ {
      printf "%s: %s line %d is not a manifest entry\n", me, file, NR > "/dev/stderr"; exit 1 }
    { print }' "$1"
}

# under DIR: keep the entries (on stdin) at or under DIR
under() { awk -F'\t' -v d="$1" '$3 == d || index($3, d "/") == 1'; }

# describe ENTRY: what an entry's path is, in words
describe() {
  case "${1%%$'\t'*}" in
    f) echo "a file" ;;
    l) local rest=${1#*$'\t'}; echo "a link to ${rest%%$'\t'*}" ;;
    d) echo "a directory" ;;
    *) echo "neither a file, a link nor a directory" ;;
  esac
}
