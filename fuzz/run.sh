#!/bin/sh
# The property tests' long mode, coverage-guided: runs every fuzz target
# (or those named) for FUZZ_SECS seconds each (default 300) with
# libFuzzer, keeping what it learns in fuzz/corpus/<target> and a crash in
# fuzz/artifacts/<target>. Prints one line per target: runs, coverage,
# corpus size, and crashes (0 unless it stopped on one).
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -eu
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-300}
targets=${*:-"spiffe_id policy_yaml config_yaml bundle svid crl ocsp detect path headers"}
cargo +nightly fuzz build -O $targets >/dev/null 2>&1 || cargo +nightly fuzz build -O
status=0
for t in $targets; do
	mkdir -p "corpus/$t"
	log=$(mktemp)
	if cargo +nightly fuzz run -O "$t" "corpus/$t" "corpus-seed/$t" -- \
		-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
		crashed=0
	else
		crashed=1
		status=1
	fi
	runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	printf '%-12s runs %-10s cov %-6s corpus %-6s crashed %s\n' "$t" "${runs:-?}" "${cov:-?}" "${corp:-?}" "$crashed"
	if [ "$crashed" = 1 ]; then
		tail -40 "$log"
	fi
	rm -f "$log"
done
exit $status
