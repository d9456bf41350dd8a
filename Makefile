# fepd -- make with any cc.  Targets: all test sanitize valgrind bench clean.
#
# Every binary is built from its sources in one cc call; the stamp file
# .build-flags holds the compiler and flags of the last build, so that
# `make CC=clang` or `make sanitize` rebuilds everything instead of linking
# stale objects.

CC ?= cc
OPT ?= -O2
WARN = -Wall -Wextra -Wpedantic -Werror
CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) $(OPT) $(EXTRA_CFLAGS)
LDFLAGS = $(EXTRA_LDFLAGS)

CORE_SRC = crypto.c frame.c sys.c
FEPD_MODULES = config.c store.c state.c metrics.c
FEPD_SRC = fep.c session.c $(FEPD_MODULES) $(CORE_SRC)
DCUSIM_SRC = dcusim.c $(CORE_SRC)
TEST_FILES = test.c test_crypto.c test_frame.c test_config.c test_store.c \
             test_sim.c test_fep.c test_fault.c test_shard.c
# The unit tests link fepd's modules (not fep.c, which holds main).
TEST_SRC = $(TEST_FILES) $(wildcard $(FEPD_MODULES)) $(CORE_SRC)
BENCH_SRC = bench.c $(CORE_SRC)
HEADERS = fep.h test.h

# fepd_t is fepd with the test hooks: fault injection at the system-call seam
# (FEP_FAULT) and a count of allocations after start-up (FEP_ALLOC_CHECK,
# which needs a linker with --wrap: GNU ld or lld; set ALLOC_CHECK= to drop it).
ALLOC_CHECK = -DFEP_ALLOC_CHECK -Wl,--wrap=malloc -Wl,--wrap=calloc \
              -Wl,--wrap=realloc -Wl,--wrap=free

PROGRAMS = fepd fepd_t dcusim fep_test fep_bench

SANITIZE_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
                 -fno-sanitize-recover=all

.PHONY: all test sanitize valgrind bench demo soak fuzz-long clean FORCE

all: $(PROGRAMS)

.build-flags: FORCE
	@echo '$(CC) $(CFLAGS) $(LDFLAGS)' | cmp -s - $@ || \
	    echo '$(CC) $(CFLAGS) $(LDFLAGS)' > $@

fepd: $(FEPD_SRC) $(HEADERS) .build-flags
	$(CC) $(CFLAGS) -o $@ $(FEPD_SRC) $(LDFLAGS)

fepd_t: $(FEPD_SRC) $(HEADERS) .build-flags
	$(CC) $(CFLAGS) -DFEP_FAULT $(ALLOC_CHECK) -o $@ $(FEPD_SRC) $(LDFLAGS)

dcusim: $(DCUSIM_SRC) $(HEADERS) .build-flags
	$(CC) $(CFLAGS) -o $@ $(DCUSIM_SRC) $(LDFLAGS)

fep_test: $(TEST_SRC) $(HEADERS) .build-flags
	$(CC) $(CFLAGS) -DFEP_FAULT -o $@ $(TEST_SRC) $(LDFLAGS)

fep_bench: $(BENCH_SRC) $(HEADERS) .build-flags
	$(CC) $(CFLAGS) -o $@ $(BENCH_SRC) $(LDFLAGS)

test: $(PROGRAMS)
	./fep_test

# The same tests with AddressSanitizer and UBSan in every binary.
sanitize:
	$(MAKE) test EXTRA_CFLAGS='$(SANITIZE_FLAGS)' EXTRA_LDFLAGS='-fsanitize=address,undefined' OPT=

# The frame decoder's mutation fuzz loop, longer than in `make test`.
fuzz-long: fep_test
	FUZZ_ITERATIONS=$${FUZZ_ITERATIONS:-10000000} ./fep_test frame_fuzz

# fepd's integration tests with fepd under valgrind memcheck.
valgrind: fepd_t dcusim fep_test
	FEP_TEST_VALGRIND=1 ./fep_test fep_poll

# Two commands from a fresh clone to seeing it work: make demo, make test.
demo: fepd dcusim
	sh ./demo.sh

# 100,000 sessions with faults; fepd's RSS and descriptors must not move.
soak: fepd dcusim
	sh ./soak.sh

bench: fep_bench fepd dcusim
	./fep_bench

clean:
	rm -f $(PROGRAMS) .build-flags

# ------------------------------------------------------------------------
# Proof of robustness (README, "Testing fepd"): coverage, fuzzing, the long fault
# and crash sweeps.  Their outputs go to cov/ and fuzz/run/ (gitignored).

.PHONY: coverage fuzz fuzz-corpus fuzz-replay test-long

# libFuzzer targets (fuzz.c): clang with -fsanitize=fuzzer.  `make fuzz`
# runs each for FUZZ_SECONDS on fuzz/corpus/NAME (the checked-in seeds),
# keeping what it finds in fuzz/run/NAME and crashes as fuzz/run/NAME-crash-*.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_MAX_LEN = 8192
FUZZ_FLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) -g -O1 \
             -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
             -fno-sanitize-recover=all
FUZZ_FRAME_SRC = fuzz.c frame.c crypto.c
FUZZ_SESSION_SRC = fuzz.c session.c config.c store.c state.c $(CORE_SRC)
FUZZ_TARGETS = fuzz_frame fuzz_session

fuzz_frame: $(FUZZ_FRAME_SRC) $(HEADERS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DFUZZ_FRAME -o $@ $(FUZZ_FRAME_SRC)

fuzz_session: $(FUZZ_SESSION_SRC) $(HEADERS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DFUZZ_SESSION -o $@ $(FUZZ_SESSION_SRC)

fuzz:
	@mkdir -p fuzz/run; \
	if ! command -v $(FUZZ_CC) >/dev/null 2>&1; then \
	    echo "make fuzz: $(FUZZ_CC) not found: no fuzzing"; exit 0; fi; \
	printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' > fuzz/run/probe.c; \
	if ! $(FUZZ_CC) -fsanitize=fuzzer -o fuzz/run/probe fuzz/run/probe.c >/dev/null 2>&1; then \
	    echo "make fuzz: $(FUZZ_CC) has no libFuzzer (-fsanitize=fuzzer): no fuzzing"; exit 0; fi; \
	$(MAKE) $(FUZZ_TARGETS) || exit 1; \
	for t in $(FUZZ_TARGETS); do \
	    name=$${t#fuzz_}; mkdir -p fuzz/run/$$name; \
	    echo "=== $$t, $(FUZZ_SECONDS) s"; \
	    ./$$t -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) \
	        -print_final_stats=1 -artifact_prefix=fuzz/run/$$name- \
	        fuzz/run/$$name fuzz/corpus/$$name 2>fuzz/run/$$name.log; rc=$$?; \
	    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' fuzz/run/$$name.log | tail -2; \
	    grep -E '^stat::number_of_executed_units' fuzz/run/$$name.log; \
	    if [ $$rc -ne 0 ]; then tail -40 fuzz/run/$$name.log; \
	        echo "make fuzz: $$t failed (log: fuzz/run/$$name.log)"; exit 1; fi; \
	done

# The seed corpora, written by fuzz.c -DFUZZ_CORPUS (checked in).
fuzz-corpus:
	@mkdir -p fuzz/run
	$(CC) $(CFLAGS) -DFUZZ_CORPUS -o fuzz/run/fuzz_corpus fuzz.c frame.c crypto.c
	rm -f fuzz/corpus/frame/* fuzz/corpus/session/*
	./fuzz/run/fuzz_corpus fuzz/corpus

# Every seed and every saved crash, run once by the harnesses built with
# $(CC) and no libFuzzer (-DFUZZ_STANDALONE), under ASan and UBSan.
fuzz-replay:
	@mkdir -p fuzz/run
	$(CC) $(CFLAGS) $(SANITIZE_FLAGS) -DFUZZ_FRAME -DFUZZ_STANDALONE \
	    -o fuzz/run/replay_frame $(FUZZ_FRAME_SRC) -fsanitize=address,undefined
	$(CC) $(CFLAGS) $(SANITIZE_FLAGS) -DFUZZ_SESSION -DFUZZ_STANDALONE \
	    -o fuzz/run/replay_session $(FUZZ_SESSION_SRC) -fsanitize=address,undefined
	./fuzz/run/replay_frame fuzz/corpus/frame $(wildcard fuzz/crashes/frame-*)
	./fuzz/run/replay_session fuzz/corpus/session $(wildcard fuzz/crashes/session-*)

# The suite with every program built by gcc --coverage -O0 in cov/ (the
# tests run there, so ./fepd_t and ./dcusim are the instrumented ones),
# then a table of line and branch coverage per source file.  A program is
# built in one cc call, so gcc names its data files after the program
# (cov/fepd_t-store.gcda, cov/fep_test-store.gcda, ...): gcov reads each,
# and a source linked into several programs is merged line by line -- a
# line or branch counts as covered when any program covered it.  The lines
# not covered are listed in cov/uncovered.txt.  COV_FILTER runs a subset.
COV_DIR = cov
COV_CC = gcc
# -O0 leaves gcc no value ranges, so -Wformat-truncation (on with -Wall)
# flags snprintf calls it can prove safe at -O2: off here, where the build is
# for measuring; every other build keeps it.
COV_FLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) -Wno-format-truncation \
            -O0 -g --coverage
COV_SOURCES = frame.c crypto.c session.c store.c state.c fep.c config.c \
              metrics.c sys.c dcusim.c
COV_FILTER =

# gcov -t text in, one row per source out (see above).
define COV_AWK
function trim(s) { gsub(/^ +| +$$/, "", s); return s }
BEGIN { n = split(want, order, " "); for (i = 1; i <= n; i++) wanted[order[i]] = 1 }
/^branch / {
    if (!(src in wanted)) next
    k = src SUBSEP line SUBSEP $$2; br[k] = 1
    if ($$3 == "taken" && $$4 + 0 > 0) brt[k] = 1
    next
}
/^(call|function|unconditional) / { next }
{
    i = index($$0, ":"); if (!i) next
    c = trim(substr($$0, 1, i - 1)); rest = substr($$0, i + 1)
    j = index(rest, ":"); ln = trim(substr(rest, 1, j - 1)) + 0
    if (ln == 0) {
        if (substr(rest, j + 1, 7) == "Source:") { src = substr(rest, j + 8); sub(/^.*\//, "", src) }
        next
    }
    line = ln
    if (!(src in wanted) || c == "-") next
    k = src SUBSEP ln; ex[k] = 1; sub(/\*$$/, "", c)
    if (c != "#####" && c != "=====" && c + 0 > 0) cov[k] = 1
}
END {
    for (k in ex) { split(k, p, SUBSEP); lt[p[1]]++; if (k in cov) lc[p[1]]++; else print p[1] ":" p[2] ": line" > uncovered }
    for (k in br) { split(k, p, SUBSEP); bt[p[1]]++; if (k in brt) bc[p[1]]++; else print p[1] ":" p[2] ": branch " p[3] > uncovered }
    printf "%-12s %15s %8s %15s %8s\n", "file", "lines", "", "branches", ""
    for (i = 1; i <= n; i++) {
        f = order[i]; if (!lt[f]) continue
        printf "%-12s %7d/%-7d %7.1f%% %7d/%-7d %7.1f%%\n", f, lc[f], lt[f], 100 * lc[f] / lt[f], \
               bc[f], bt[f], bt[f] ? 100 * bc[f] / bt[f] : 100
    }
}
endef
export COV_AWK

coverage:
	@command -v $(COV_CC) >/dev/null 2>&1 && command -v gcov >/dev/null 2>&1 || \
	    { echo "make coverage: needs $(COV_CC) and gcov"; exit 1; }
	rm -rf $(COV_DIR) && mkdir -p $(COV_DIR)
	$(COV_CC) $(COV_FLAGS) -o $(COV_DIR)/fepd $(FEPD_SRC)
	$(COV_CC) $(COV_FLAGS) -DFEP_FAULT $(ALLOC_CHECK) -o $(COV_DIR)/fepd_t $(FEPD_SRC)
	$(COV_CC) $(COV_FLAGS) -o $(COV_DIR)/dcusim $(DCUSIM_SRC)
	$(COV_CC) $(COV_FLAGS) -DFEP_FAULT -o $(COV_DIR)/fep_test $(TEST_SRC)
	@# The rest of the tree as the tests see it from the top (docs, ...).
	@for f in *; do [ $$f = $(COV_DIR) ] || [ -e $(COV_DIR)/$$f ] || \
	    ln -s ../$$f $(COV_DIR)/$$f; done
	@echo "running the suite in $(COV_DIR)/ (log: $(COV_DIR)/test.log)"
	@cd $(COV_DIR) && { ./fep_test $(COV_FILTER) > test.log 2>&1; echo $$? > test.rc; \
	    tail -1 test.log; grep '^FAIL' test.log; true; }
	@for g in $(COV_DIR)/*.gcda; do gcov -b -c -t -o $(COV_DIR) "$$g" 2>/dev/null; done | \
	    awk -v want="$(COV_SOURCES)" -v uncovered=$(COV_DIR)/uncovered.txt "$$COV_AWK" | \
	    tee $(COV_DIR)/summary.txt
	@touch $(COV_DIR)/uncovered.txt
	@sort -t: -k1,1 -k2,2n -o $(COV_DIR)/uncovered.txt $(COV_DIR)/uncovered.txt
	@echo "lines and branches not covered: $(COV_DIR)/uncovered.txt"
	@[ "$$(cat $(COV_DIR)/test.rc)" = 0 ] || \
	    { echo "make coverage: the suite failed; the table is of that run"; exit 1; }

# The fault sweep over every N up to each operation's call count, and 100
# SIGKILL points (test_fault.c; FEP_FAULT_SWEEP=all widens the sweep to
# every error of every operation, plain and sticky).
test-long: $(PROGRAMS)
	FEP_TEST_LONG=1 ./fep_test fault_sweep
	FEP_TEST_LONG=1 ./fep_test fault_crash
