/*
 * rseq_baseline.c - the hand-written C rseq per-CPU increment that cpulocal's
 * PerCpuCounter::add is measured against.
 *
 * It is what a careful C programmer writes with librseq's x86_64 macros
 * (rseq_addv): glibc's rseq area (thread pointer + __rseq_offset), a critical
 * section whose descriptor lives in the __rseq_cs section, the rseq_cs store,
 * a cpu_id compare, and `addq` as the commit, the last instruction of the
 * section; the abort handler sits in __rseq_failure right after `ud1` + the
 * glibc signature 0x53053053. An aborted section is retried. There is no
 * fence and no fallback: this is the floor cpulocal's fast path is compared to.
 *
 * Every exported function runs a whole loop, so the benchmark makes one FFI
 * call per batch of operations, never one per operation.
 *
 * Built by cpulocal-cli/build.rs for x86_64 Linux with glibc only.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__x86_64__) || !defined(__linux__)
#error "rseq_baseline.c is x86_64 Linux only (build.rs should not compile it here)"
#endif

/* glibc >= 2.35 publishes its registration. Weak, so that an older glibc
 * links and simply reports "no rseq" (the addresses are then NULL). */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

/* The signature glibc registers on x86_64. */
#define CL_RSEQ_SIG 0x53053053

/* struct rseq, the fields this file uses (kernel ABI, 32-byte aligned). */
struct cl_rseq_abi {
	uint32_t cpu_id_start; /* 0 */
	uint32_t cpu_id;       /* 4 */
	uint64_t rseq_cs;      /* 8 */
	uint32_t flags;        /* 16 */
	uint32_t node_id;      /* 20 */
	uint32_t mm_cid;       /* 24 */
} __attribute__((aligned(32)));

/* One CPU's slot: a 32-bit word (used only by the fence-check variant, the
 * layout of cpulocal's Slot<AtomicI64>), then the value, alone in 128 bytes. */
struct cl_slot {
	uint32_t fence;
	int64_t v;
} __attribute__((aligned(128)));

/* The per-CPU array. */
struct cl_slots {
	size_t ncpus;
	struct cl_slot slot[];
};

_Static_assert(sizeof(struct cl_slot) == 128, "slot must fill 128 bytes");
_Static_assert(offsetof(struct cl_slot, v) == 8, "value after the fence word");
_Static_assert(offsetof(struct cl_slots, slot) == 128, "slots start aligned");

#define CL_READ_ONCE_U32(x) (*(const volatile uint32_t *)&(x))

/* The calling thread's area, or NULL when glibc did not register rseq for
 * the process or for this thread. */
static inline struct cl_rseq_abi *cl_area(void)
{
	if (&__rseq_size == NULL || &__rseq_offset == NULL || __rseq_size == 0)
		return NULL;
	struct cl_rseq_abi *rs =
		(struct cl_rseq_abi *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if ((int32_t)CL_READ_ONCE_U32(rs->cpu_id) < 0)
		return NULL; /* -1 unregistered, -2 registration failed */
	return rs;
}

/*
 * librseq's rseq_addv for x86_64: *v += count on `cpu`, or abort.
 * Returns 0 when the commit ran, -1 after an abort (preemption, migration,
 * signal, or the thread was not on `cpu`).
 *
 *   3: rseq_cs descriptor {0, 0, start=1f, post_commit_offset=2f-1f, abort=4f}
 *      lea  3b(%rip), %rax ; mov %rax, rseq_cs      arm
 *   1: cmp  cpu, cpu_id ; jnz 4f                     start_ip
 *      addq count, *v                                commit
 *   2:                                               post-commit
 *      ud1 + signature ; 4: jmp abort                (in __rseq_failure)
 */
static inline __attribute__((always_inline)) int
cl_rseq_addv(struct cl_rseq_abi *rs, int64_t *v, int64_t count, uint32_t cpu)
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
		"cmpl %[cpu], %[current_cpu_id]\n\t"
		"jnz 4f\n\t"
		/* final store */
		"addq %[count], %[v]\n\t"
		"2:\n\t"
		".pushsection __rseq_failure, \"ax\"\n\t"
		".byte 0x0f, 0xb9, 0x3d\n\t"
		".long 0x53053053\n\t"
		"4:\n\t"
		"jmp %l[abort]\n\t"
		".popsection\n\t"
		: /* gcc asm goto does not allow outputs */
		: [cpu] "r"(cpu),
		  [current_cpu_id] "m"(rs->cpu_id),
		  [rseq_cs] "m"(rs->rseq_cs),
		  [v] "m"(*v),
		  [count] "er"(count)
		: "memory", "cc", "rax"
		: abort);
	return 0;
abort:
	return -1;
}

/*
 * The same section with cpulocal's extra step: after the cpu_id check, a
 * check that the slot's fence word is 0 (it always is here). Measures what
 * the fence protocol costs on the fast path, apart from everything else.
 * Returns 0 (committed), -1 (aborted) or 1 (fence set; never happens here).
 */
static inline __attribute__((always_inline)) int
cl_rseq_addv_fence(struct cl_rseq_abi *rs, const uint32_t *fence, int64_t *v,
		   int64_t count, uint32_t cpu)
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
		"cmpl %[cpu], %[current_cpu_id]\n\t"
		"jnz 4f\n\t"
		"cmpl $0, %[fence]\n\t"
		"jnz %l[fenced]\n\t"
		/* final store */
		"addq %[count], %[v]\n\t"
		"2:\n\t"
		".pushsection __rseq_failure, \"ax\"\n\t"
		".byte 0x0f, 0xb9, 0x3d\n\t"
		".long 0x53053053\n\t"
		"4:\n\t"
		"jmp %l[abort]\n\t"
		".popsection\n\t"
		:
		: [cpu] "r"(cpu),
		  [current_cpu_id] "m"(rs->cpu_id),
		  [rseq_cs] "m"(rs->rseq_cs),
		  [fence] "m"(*fence),
		  [v] "m"(*v),
		  [count] "er"(count)
		: "memory", "cc", "rax"
		: abort, fenced);
	return 0;
abort:
	return -1;
fenced:
	return 1;
}

/* 1 if the calling thread has a glibc-registered rseq area, else 0. */
int cl_c_rseq_available(void)
{
	return cl_area() != NULL;
}

/* A zeroed array of `ncpus` slots (ncpus >= the number of possible CPUs), or
 * NULL when out of memory. Free with cl_c_slots_free. */
struct cl_slots *cl_c_slots_new(size_t ncpus)
{
	if (ncpus > (SIZE_MAX - sizeof(struct cl_slots)) / sizeof(struct cl_slot))
		return NULL;
	size_t bytes = sizeof(struct cl_slots) + ncpus * sizeof(struct cl_slot);
	struct cl_slots *s = aligned_alloc(128, bytes);
	if (s == NULL)
		return NULL;
	memset(s, 0, bytes);
	s->ncpus = ncpus;
	return s;
}

void cl_c_slots_free(struct cl_slots *s)
{
	free(s);
}

/* The sum of all slots; each read atomically (relaxed). */
int64_t cl_c_slots_sum(const struct cl_slots *s)
{
	int64_t sum = 0;
	for (size_t i = 0; i < s->ncpus; i++)
		sum += __atomic_load_n(&s->slot[i].v, __ATOMIC_RELAXED);
	return sum;
}

/*
 * Adds 1 to the current CPU's slot `iters` times, retrying aborted sections.
 * Returns the number of aborts, or UINT64_MAX (nothing done) when the
 * calling thread has no rseq area.
 *
 * Per operation, as librseq's users write it: read cpu_id_start, index the
 * array, run the section. The area pointer is computed once per call. There
 * is no bounds check on the CPU number (librseq has none either): `s` must
 * have a slot for every possible CPU, and the kernel's cpu_id_start is
 * always below the number of possible CPUs.
 */
uint64_t cl_c_rseq_add_loop(struct cl_slots *s, uint64_t iters)
{
	struct cl_rseq_abi *rs = cl_area();
	if (rs == NULL)
		return UINT64_MAX;
	struct cl_slot *slot = s->slot;
	uint64_t aborts = 0;
	for (uint64_t i = 0; i < iters; i++) {
		for (;;) {
			uint32_t cpu = CL_READ_ONCE_U32(rs->cpu_id_start);
			if (__builtin_expect(cl_rseq_addv(rs, &slot[cpu].v, 1, cpu) == 0, 1))
				break;
			aborts++;
		}
	}
	return aborts;
}

/*
 * As cl_c_rseq_add_loop, with cpulocal's fence check in the section (the
 * fence words stay 0). Same return value.
 */
uint64_t cl_c_rseq_add_fence_loop(struct cl_slots *s, uint64_t iters)
{
	struct cl_rseq_abi *rs = cl_area();
	if (rs == NULL)
		return UINT64_MAX;
	struct cl_slot *slot = s->slot;
	uint64_t aborts = 0;
	for (uint64_t i = 0; i < iters; i++) {
		for (;;) {
			uint32_t cpu = CL_READ_ONCE_U32(rs->cpu_id_start);
			int r = cl_rseq_addv_fence(rs, &slot[cpu].fence, &slot[cpu].v, 1, cpu);
			if (__builtin_expect(r == 0, 1))
				break;
			if (r > 0)
				return UINT64_MAX; /* a fence is never set in this file */
			aborts++;
		}
	}
	return aborts;
}
