/*
 * rseq_add.h - a hand-written rseq per-CPU add in C, x86_64 only: what a C
 * programmer writes with librseq's macros, and what a C caller of
 * cpulocal_counter_add is compared with (benches/ffi.c) and contrasted with
 * under single-stepping (tests/c/singlestep.c). The same section as
 * cl_rseq_addv in cpulocal-cli/c/rseq_baseline.c: glibc's rseq area (thread
 * pointer + __rseq_offset), a descriptor in __rseq_cs, the rseq_cs store,
 * a cpu_id compare, the add as the commit; the abort handler after `ud1` and
 * glibc's signature 0x53053053. No fence and no fallback: a caller retries
 * an aborted section until it commits.
 */
#ifndef CPULOCAL_RSEQ_ADD_H
#define CPULOCAL_RSEQ_ADD_H

#if !defined(__x86_64__) || !defined(__linux__)
#error "rseq_add.h is x86_64 Linux only"
#endif

#include <stddef.h>
#include <stdint.h>

/* glibc >= 2.35; weak, so an older glibc links and reports "no rseq". */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

/* struct rseq, the fields used here (kernel ABI). */
struct rseq_add_area {
	uint32_t cpu_id_start;
	uint32_t cpu_id;
	uint64_t rseq_cs;
	uint32_t flags;
} __attribute__((aligned(32)));

/* The calling thread's area, or NULL when glibc did not register rseq. */
static inline struct rseq_add_area *rseq_add_area(void)
{
	if (&__rseq_size == NULL || &__rseq_offset == NULL || __rseq_size == 0)
		return NULL;
	struct rseq_add_area *rs =
		(struct rseq_add_area *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if ((int32_t)*(volatile uint32_t *)&rs->cpu_id < 0)
		return NULL;
	return rs;
}

/* The area found again, as librseq's rseq_get_abi() finds it for every
 * operation (the global offset reloaded after each section). */
static inline __attribute__((always_inline)) struct rseq_add_area *rseq_add_area_again(void)
{
	return (struct rseq_add_area *)((char *)__builtin_thread_pointer() +
					*(const volatile ptrdiff_t *)&__rseq_offset);
}

/*
 * *v += count if the thread runs on `cpu`: 0 when committed, -1 when the
 * section was aborted (preempted, migrated, signalled, single-stepped) or
 * the thread is not on `cpu`.
 *
 *   1: cmp cpu, cpu_id ; jnz 4f                     start_ip
 *      addq count, *v                               commit
 *   2:                                              post-commit
 */
static inline __attribute__((always_inline)) int
rseq_addv(struct rseq_add_area *rs, uint32_t cpu, int64_t *v, int64_t count)
{
	__asm__ __volatile__ goto(
		".pushsection __rseq_cs, \"aw\"\n\t"
		".balign 32\n\t"
		"3:\n\t"
		".long 0x0, 0x0\n\t"
		".quad 1f, (2f - 1f), 4f\n\t"
		".popsection\n\t"
		".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"
		".quad 3b\n\t"
		".popsection\n\t"
		"leaq 3b(%%rip), %%rax\n\t"
		"movq %%rax, %[rseq_cs]\n\t"
		"1:\n\t"
		"cmpl %[cpu], %[cpu_id]\n\t"
		"jnz 4f\n\t"
		"addq %[count], %[v]\n\t"
		"2:\n\t"
		".pushsection __rseq_failure, \"ax\"\n\t"
		".byte 0x0f, 0xb9, 0x3d\n\t"
		".long 0x53053053\n\t"
		"4:\n\t"
		"jmp %l[abort]\n\t"
		".popsection\n\t"
		:
		: [cpu] "r"(cpu), [cpu_id] "m"(rs->cpu_id), [rseq_cs] "m"(rs->rseq_cs),
		  [v] "m"(*v), [count] "er"(count)
		: "memory", "cc", "rax"
		: abort);
	return 0;
abort:
	return -1;
}

/* slots[cpu] += count for the CPU the thread runs on, retried until a
 * section commits: returns the number of attempts. `stride` is the distance
 * between two CPUs' words, in int64_t. */
static inline __attribute__((always_inline)) uint64_t
rseq_add_retry(struct rseq_add_area *rs, int64_t *slots, size_t stride, int64_t count)
{
	uint64_t attempts = 0;
	for (;;) {
		attempts++;
		uint32_t cpu = *(volatile uint32_t *)&rs->cpu_id_start;
		if (rseq_addv(rs, cpu, &slots[cpu * stride], count) == 0)
			return attempts;
	}
}

#endif
