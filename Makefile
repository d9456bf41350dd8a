# fepd -- make with any cc, under GNU make or BSD make (bmake).
# Targets: all test sanitize valgrind bench bench-field demo soak clean;
# fuzz fuzz-long fuzz-corpus fuzz-replay coverage test-long (README,
# "Testing fepd"); cross-test analyze (docs/PORTING.md).
#
# The makefile is POSIX make plus .PHONY, which both makes know: no
# $(wildcard), no define or export, no pattern rules, no conditionals.
# What needs more than that is a POSIX sh script under scripts/, called
# with the source lists and flags it needs.
#
# Every binary is built from its sources in one cc call; the stamp file
# .build-flags holds the compiler and flags of the last build, so that
# `make CC=clang` or `make sanitize` rebuilds everything instead of linking
# stale objects.
#
# CC is make's own: `cc` under GNU make, `cc` or, on Linux, `cc -pipe` under
# bmake; `make CC=clang` (or CC in the environment) chooses another.  It is
# not set here with `CC ?= cc`, which does nothing in either make, since both
# define CC before reading this file.  `?=` is used only for variables
# that neither make presets (OPT, FUZZ_CC, FUZZ_SECONDS), so that the
# environment can set them.  CFLAGS and LDFLAGS are set here in full (bmake
# presets them too); add to them with EXTRA_CFLAGS and EXTRA_LDFLAGS.

OPT ?= -O2
WARN = -Wall -Wextra -Wpedantic -Werror
# 64-bit off_t and time_t where the C library's default is 32 bits (glibc
# on 32-bit targets): a CSV file may pass 2 GiB, a time 2038.  Nothing
# changes where they are 64 bits already (64-bit targets, musl, the BSDs).
STD = -std=c99 -D_POSIX_C_SOURCE=200809L -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
CFLAGS = $(STD) $(WARN) $(OPT) $(EXTRA_CFLAGS)
LDFLAGS = $(EXTRA_LDFLAGS)

CORE_SRC = crypto.c frame.c sys.c
FEPD_MODULES = config.c store.c state.c metrics.c
FEPD_SRC = fep.c session.c $(FEPD_MODULES) $(CORE_SRC)
DCUSIM_SRC = dcusim.c $(CORE_SRC)
TEST_FILES = test.c test_crypto.c test_frame.c test_config.c test_store.c \
             test_state.c test_sim.c test_fep.c test_fault.c test_trust.c \
             test_docs.c test_daemon.c test_shard.c
# The unit tests link fepd's modules (not fep.c, which holds main).
TEST_SRC = $(TEST_FILES) $(FEPD_MODULES) $(CORE_SRC)
# The test files whose tests start no process (scripts/cross-test.sh runs
# them under an emulator, which cannot start the programs it tests).
UNIT_TEST_FILES = test_crypto.c test_frame.c test_config.c test_store.c \
                  test_state.c
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

# Rewritten only when the build command changes; FORCE makes make look at
# it every time (a rule of its own: bmake does not know a target that is
# only named in .PHONY).
FORCE:
.build-flags: FORCE
	@echo '$(CC) $(CFLAGS) $(LDFLAGS) $(ALLOC_CHECK)' | cmp -s - $@ || \
	    echo '$(CC) $(CFLAGS) $(LDFLAGS) $(ALLOC_CHECK)' > $@

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

# N shards of fepd and one fepd polling 4,000 keyed DCUs 200 ms away
# (docs/BENCHMARKS.md, "Field benchmark").
.PHONY: bench-field
bench-field: fep_bench fepd dcusim
	./fep_bench field

clean:
	rm -f $(PROGRAMS) .build-flags
	rm -rf cross

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
FUZZ_FLAGS = $(STD) $(WARN) -g -O1 \
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
# $(CC) and no libFuzzer (-DFUZZ_STANDALONE), under ASan and UBSan.  The
# crash files are found by the shell (a glob that matches nothing is
# dropped), one recipe line each, so that no make function is needed.
fuzz-replay:
	@mkdir -p fuzz/run
	$(CC) $(CFLAGS) $(SANITIZE_FLAGS) -DFUZZ_FRAME -DFUZZ_STANDALONE \
	    -o fuzz/run/replay_frame $(FUZZ_FRAME_SRC) -fsanitize=address,undefined
	$(CC) $(CFLAGS) $(SANITIZE_FLAGS) -DFUZZ_SESSION -DFUZZ_STANDALONE \
	    -o fuzz/run/replay_session $(FUZZ_SESSION_SRC) -fsanitize=address,undefined
	set -- fuzz/crashes/frame-*; [ -e "$$1" ] || set --; \
	    ./fuzz/run/replay_frame fuzz/corpus/frame "$$@"
	set -- fuzz/crashes/session-*; [ -e "$$1" ] || set --; \
	    ./fuzz/run/replay_session fuzz/corpus/session "$$@"

# The suite with every program built by gcc --coverage -O0 in cov/, then a
# table of line and branch coverage per source file (scripts/coverage.sh
# says how).  COV_FILTER runs a subset.
COV_DIR = cov
COV_CC = gcc
# -O0 leaves gcc no value ranges, so -Wformat-truncation (on with -Wall)
# flags snprintf calls it can prove safe at -O2: off here, where the build is
# for measuring; every other build keeps it.
COV_FLAGS = $(STD) $(WARN) -Wno-format-truncation -O0 -g --coverage
COV_SOURCES = frame.c crypto.c session.c store.c state.c fep.c config.c \
              metrics.c sys.c dcusim.c
COV_FILTER =

coverage:
	COV_DIR='$(COV_DIR)' COV_CC='$(COV_CC)' COV_FLAGS='$(COV_FLAGS)' \
	COV_SOURCES='$(COV_SOURCES)' COV_FILTER='$(COV_FILTER)' \
	ALLOC_CHECK='$(ALLOC_CHECK)' FEPD_SRC='$(FEPD_SRC)' \
	DCUSIM_SRC='$(DCUSIM_SRC)' TEST_SRC='$(TEST_SRC)' \
	    sh scripts/coverage.sh

# The fault sweep over every N up to each operation's call count, and 100
# SIGKILL points (test_fault.c; FEP_FAULT_SWEEP=all widens the sweep to
# every error of every operation, plain and sticky).
test-long: $(PROGRAMS)
	FEP_TEST_LONG=1 ./fep_test fault_sweep
	FEP_TEST_LONG=1 ./fep_test fault_crash

# make install / uninstall, after make: they build nothing, so that a test
# run cannot rebuild the programs under test (scripts/install.sh says what
# goes where).
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: install uninstall
install:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' sh scripts/install.sh install
uninstall:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' sh scripts/install.sh uninstall

# ------------------------------------------------------------------------
# Proof of a port (docs/PORTING.md).

.PHONY: cross-test analyze

# s390x (big-endian) under qemu: the unit tests of UNIT_TEST_FILES, and
# fepd and dcusim against the native ones; builds with musl-gcc and tcc.
# Outputs in cross/ (gitignored); a missing tool skips its steps.
cross-test: fepd dcusim
	STD='$(STD)' WARN='$(WARN)' FEPD_SRC='$(FEPD_SRC)' \
	DCUSIM_SRC='$(DCUSIM_SRC)' TEST_SRC='$(TEST_SRC)' \
	UNIT_TEST_FILES='$(UNIT_TEST_FILES)' \
	    sh scripts/cross-test.sh

# clang's static analyzer over every program file, as fepd and as the test
# build fepd_t; fails on any finding.
ANALYZER = clang
ANALYZE_SRC = fep.c session.c config.c store.c state.c metrics.c sys.c \
              frame.c crypto.c dcusim.c bench.c

analyze:
	ANALYZER='$(ANALYZER)' STD='$(STD)' ANALYZE_SRC='$(ANALYZE_SRC)' \
	    sh scripts/analyze.sh
