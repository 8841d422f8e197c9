/*
 * ffi.c - the C side of benches/ffi.rs, built by it into a shared object
 * linked against libcpulocal.so (so each cpulocal_counter_add is what a C
 * program linked with -lcpulocal makes: a call through the PLT, which no
 * compiler can inline without cross-language LTO).
 *
 * Each loop runs `iters` adds of 1 and returns how many it made.
 */
#define _GNU_SOURCE
#include <stdint.h>

#include "cpulocal.h"
#include "../c/rseq_add.h"

/* A C caller of the library. */
uint64_t ffi_c_api_add_loop(cpulocal_counter *c, uint64_t iters)
{
	for (uint64_t i = 0; i < iters; i++)
		cpulocal_counter_add(c, 1);
	return iters;
}

/* Per-CPU words 128 bytes apart, as cpulocal's slots are. */
#define STRIDE (128 / sizeof(int64_t))

/* 1 if the calling thread has glibc's rseq area (the loops below need it). */
int ffi_c_rseq_available(void)
{
	return rseq_add_area() != NULL;
}

/*
 * The hand-written rseq add, the area found again for every add as
 * librseq's calls find it (the reference a per-call API pays too).
 * `slots` holds one word every STRIDE int64_t per possible CPU.
 */
uint64_t ffi_c_rseq_add_loop(int64_t *slots, uint64_t iters)
{
	if (rseq_add_area() == NULL)
		return 0;
	for (uint64_t i = 0; i < iters; i++)
		rseq_add_retry(rseq_add_area_again(), slots, STRIDE, 1);
	return iters;
}

/* The same with the area in a register for the whole loop: the floor. */
uint64_t ffi_c_rseq_add_hoisted_loop(int64_t *slots, uint64_t iters)
{
	struct rseq_add_area *rs = rseq_add_area();
	if (rs == NULL)
		return 0;
	for (uint64_t i = 0; i < iters; i++)
		rseq_add_retry(rs, slots, STRIDE, 1);
	return iters;
}
