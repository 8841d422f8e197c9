/*
 * ffi_static.c - the static-linking half of benches/ffi.rs: a C program
 * linked with libcpulocal.a (a direct call per add, and the library's
 * thread-local variable relaxed by the linker to the executable's own TLS
 * block, with no __tls_get_addr call) that times the loops of ffi.c in
 * alternating batches, as the Rust half does.
 *
 *   ffi_static ROUNDS BATCH
 *
 * Prints ns per add (median of the rounds) and the C API's time over each
 * hand-written loop's in the same round (median).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cpulocal.h"

uint64_t ffi_c_api_add_loop(cpulocal_counter *c, uint64_t iters);
int ffi_c_rseq_available(void);
uint64_t ffi_c_rseq_add_loop(int64_t *slots, uint64_t iters);
uint64_t ffi_c_rseq_add_hoisted_loop(int64_t *slots, uint64_t iters);

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp);
	return v[n / 2];
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 15;
	uint64_t batch = argc > 2 ? strtoull(argv[2], NULL, 10) : 20000000;
	if (rounds < 1 || rounds > 1000 || batch == 0)
		return 2;
	cpu_set_t set;
	sched_getaffinity(0, sizeof set, &set);
	int cpu = 0;
	while (!CPU_ISSET(cpu, &set))
		cpu++;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof set, &set);
	sched_yield();

	if (!ffi_c_rseq_available()) {
		printf("static: no glibc rseq area for this thread: nothing to compare\n");
		return 0;
	}
	cpulocal_counter *c = cpulocal_counter_new();
	unsigned cpus = cpulocal_possible_cpus();
	int64_t *slots = calloc((size_t)cpus * 16, sizeof *slots);
	double *t[3], *ratio[3];
	for (int k = 0; k < 3; k++) {
		t[k] = calloc((size_t)rounds, sizeof(double));
		ratio[k] = calloc((size_t)rounds, sizeof(double));
	}
	if (!c || !slots)
		return 2;
	uint64_t warm = batch < 1000000 ? batch : 1000000;
	ffi_c_api_add_loop(c, warm);
	ffi_c_rseq_add_loop(slots, warm);
	ffi_c_rseq_add_hoisted_loop(slots, warm);
	for (int r = 0; r < rounds; r++) {
		double ns[3];
		for (int k = 0; k < 3; k++) {
			int which = (r + k) % 3;
			double t0 = now_ns();
			if (which == 0)
				ffi_c_api_add_loop(c, batch);
			else if (which == 1)
				ffi_c_rseq_add_loop(slots, batch);
			else
				ffi_c_rseq_add_hoisted_loop(slots, batch);
			ns[which] = (now_ns() - t0) / (double)batch;
		}
		for (int k = 0; k < 3; k++) {
			t[k][r] = ns[k];
			ratio[k][r] = ns[0] / ns[k];
		}
	}
	int64_t total = 0;
	for (unsigned i = 0; i < cpus * 16; i++)
		total += slots[i];
	int64_t want = (int64_t)(warm + (uint64_t)rounds * batch);
	if (cpulocal_counter_sum(c) != want || total != 2 * want) {
		printf("static: adds lost\n");
		return 1;
	}
	printf("ns per add (median of the rounds), static linking, CPU %d\n", cpu);
	printf("  %-42s %6.3f\n", "C cpulocal_counter_add (libcpulocal.a)", median(t[0], rounds));
	printf("  %-42s %6.3f\n", "C hand-written rseq add (area per add)", median(t[1], rounds));
	printf("  %-42s %6.3f\n", "C hand-written rseq add (area hoisted)", median(t[2], rounds));
	printf("C API's time / each loop's time in the same round (median)\n");
	printf("  vs %-39s %6.2f\n", "C hand-written rseq add (area per add)", median(ratio[1], rounds));
	printf("  vs %-39s %6.2f\n", "C hand-written rseq add (area hoisted)", median(ratio[2], rounds));
	cpulocal_counter_free(c);
	return 0;
}
