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
             test_sim.c test_fep.c test_fault.c
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

.PHONY: all test sanitize valgrind bench demo fuzz-long clean FORCE

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

bench: fep_bench fepd dcusim
	./fep_bench

clean:
	rm -f $(PROGRAMS) .build-flags
