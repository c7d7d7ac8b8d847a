#!/usr/bin/env bash
# Deliberately broken engines (issue 20): each mutant below is applied to a
# copy of HEAD, and the model's fixed seeds (the ones CI runs) must fail on it.
# A mutant that survives is a hole in the model tests. Prints one line per
# mutant: caught (with the first failure) or SURVIVED, and exits 1 if any did.
#
# Usage: benches/mutants.sh [NAME...]   (default: every mutant)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach -q "$work/tree" HEAD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/mutants}
# Minimizing a failure replays it many times; a short budget is enough here.
export BTRS_MODEL_SHRINK=${BTRS_MODEL_SHRINK:-30}

# name | file | text (must occur exactly once) | replacement | what it breaks
mutants=(
  "csum-overwrite|src/fs/txn/file.rs|if !r.sums.is_empty() {|if !r.sums.is_empty() && r.pos >= old_size {|an overwrite inside the file stores no checksums for its new extent"
  "truncate-tail|src/fs/txn/file.rs|self.write_zeros(root, ino, size, keep.min(old), &mut WriteReport::default())?;|self.write_zeros(root, ino, size, keep.min(old).saturating_sub(1).max(size), &mut WriteReport::default())?;|truncate down leaves the last byte of the kept sector unzeroed (off by one)"
  "csum-delete|src/fs/txn/file_extent.rs|self.delete_csums(disk_bytenr, disk_num_bytes)?;|let _ = (disk_bytenr, disk_num_bytes);|checksums of a freed data extent stay in the csum tree"
  "nlink|src/fs/txn/namespace.rs|it.nlink = (it.nlink.get() + 1).into();|it.nlink = it.nlink.get().into();|a new hard link does not raise the link count"
)
want=("$@")
status=0
for m in "${mutants[@]}"; do
  IFS='|' read -r name file pat rep what <<<"$m"
  export PAT=$pat REP=$rep
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  git -C "$work/tree" checkout -q -- .
  n=$(perl -0ne '$n = () = /\Q$ENV{PAT}\E/g; print $n' "$work/tree/$file")
  if [ "$n" != 1 ]; then
    echo "mutant $name: the pattern matches $n times in $file (the code moved: update the mutant)"
    status=1
    continue
  fi
  perl -0pi -e 's/\Q$ENV{PAT}\E/$ENV{REP}/' "$work/tree/$file"
  log="$work/$name.log"
  if ! (cd "$work/tree" && cargo test --release --lib --no-run) >"$log" 2>&1; then
    echo "mutant $name: does not build (see the replacement)"; tail -5 "$log"
    status=1
    continue
  fi
  start=$(date +%s)
  if (cd "$work/tree" && cargo test --release --lib model_tests::model_lib -- --test-threads=2) >"$log" 2>&1; then
    echo "mutant $name ($what): SURVIVED the fixed seeds in $(( $(date +%s) - start )) s"
    status=1
  else
    first=$(grep -m1 -E "^seed [0-9]+ on .* failed after" "$log" || grep -m1 -E "panicked|error" "$log" || true)
    failed=$(grep -cE "^    model_tests::" "$log" || true)
    echo "mutant $name ($what): caught in $(( $(date +%s) - start )) s by $failed fixed-seed tests; first: ${first:0:300}"
  fi
done
exit $status
