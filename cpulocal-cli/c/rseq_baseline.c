/*
 * rseq_baseline.c - hand-written C rseq per-CPU loops that cpulocal's
 * structures are measured against.
 *
 * They are what a careful C programmer writes with librseq's x86_64 macros:
 * glibc's rseq area (thread pointer + __rseq_offset), critical sections whose
 * descriptors live in the __rseq_cs section, the rseq_cs store, an index
 * compare, and one store as the commit, the last instruction of the section;
 * the abort handler sits in __rseq_failure right after `ud1` + the glibc
 * signature 0x53053053. An aborted or failed section is retried. There is no
 * fence and no fallback: this is the floor cpulocal's fast paths are compared
 * to.
 *
 * The loops:
 *   - the per-CPU increment PerCpuCounter::add is measured against, indexed
 *     by cpu_id (cl_c_rseq_add_loop), and the same with cpulocal's fence
 *     check in the section (cl_c_rseq_add_fence_loop);
 * and the five loops of librseq's param_test benchmark, mirrored:
 *   - counter          slot[idx].count += 1            (cl_c_counter_loop)
 *   - spinlock         per-slot lock, count++ under it (cl_c_spinlock_loop)
 *   - list             pop + push on a per-slot LIFO   (cl_c_list_loop)
 *   - pointer buffer   pop + push of node pointers     (cl_c_ptrbuf_loop)
 *   - memcpy buffer    pop + push of 16-byte items     (cl_c_membuf_loop)
 *
 * The five take an index mode (enum cl_index_mode):
 *   CL_CPU_ID  index = the area's cpu_id_start, read before the section; the
 *              section compares the area's cpu_id with it;
 *   CL_MM_CID  index = the area's mm_cid, read before the section; the section
 *              compares mm_cid with it (needs a kernel that publishes
 *              mm_cid: cl_c_mm_cid_available).
 * and an area lookup (enum cl_area):
 *   CL_AREA_PER_OP  the thread's area is found again for every operation, as
 *              librseq's calls do (rseq_get_abi(): the thread pointer plus a
 *              global offset, which the compiler reloads after every asm
 *              statement that clobbers memory): librseq's own cost, and what
 *              any per-call API pays;
 *   CL_AREA_HOISTED  the area is found once per call of the exported loop
 *              and stays in a register: the floor, which only a caller
 *              holding the area across its own loop reaches.
 * Each loop is compiled four times, once per mode and lookup with both
 * constants, so the hot loop has no branch on them: the exported function
 * picks the copy once per call.
 *
 * Every exported loop runs `iters` operations, so the benchmark makes one FFI
 * call per batch of operations, never one per operation. Each returns the
 * number of aborted or failed sections it retried, or UINT64_MAX (nothing
 * done) when the calling thread cannot run it (no rseq area; in CL_MM_CID
 * mode, no mm_cid either).
 *
 * Built by cpulocal-cli/build.rs for x86_64 Linux with glibc only.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#if !defined(__x86_64__) || !defined(__linux__)
#error "rseq_baseline.c is x86_64 Linux only (build.rs should not compile it here)"
#endif

/* glibc >= 2.35 publishes its registration. Weak, so that an older glibc
 * links and simply reports "no rseq" (the addresses are then NULL). */
extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

/* The signature glibc registers on x86_64 (the `.long` after `ud1` in every
 * section's abort handler). */
#define CL_RSEQ_SIG 0x53053053

/* getauxval key of the kernel's rseq feature size (Linux 6.3+), and the size
 * that covers mm_cid (offsetof + sizeof: 24 + 4). */
#define CL_AT_RSEQ_FEATURE_SIZE 27
#define CL_RSEQ_MM_CID_END 28

/* struct rseq's original feature size (the fields up to `flags`) and the
 * size glibc allocates and registers for it. */
#define CL_RSEQ_ORIG_FEATURE_SIZE 20
#define CL_RSEQ_ORIG_ALLOC_SIZE 32

/* struct rseq, the fields this file uses (kernel ABI, 32-byte aligned), and
 * the same 32 bytes as 32-bit words, so that a section can name the field it
 * compares by a constant word index (see CL_INDEX_FIELD). */
struct cl_rseq_abi {
	union {
		struct {
			uint32_t cpu_id_start; /* 0 */
			uint32_t cpu_id;       /* 4 */
			uint64_t rseq_cs;      /* 8 */
			uint32_t flags;        /* 16 */
			uint32_t node_id;      /* 20 */
			uint32_t mm_cid;       /* 24 */
		};
		uint32_t word[8];
	};
} __attribute__((aligned(32)));

_Static_assert(offsetof(struct cl_rseq_abi, cpu_id) == 4, "kernel ABI");
_Static_assert(offsetof(struct cl_rseq_abi, mm_cid) == 24, "kernel ABI");
_Static_assert(sizeof(struct cl_rseq_abi) == 32, "kernel ABI");
_Static_assert(offsetof(struct cl_rseq_abi, word[1]) == 4, "word 1 is cpu_id");
_Static_assert(offsetof(struct cl_rseq_abi, word[6]) == 24, "word 6 is mm_cid");

/* Which field of the area indexes the slots (the `mode` argument of the
 * loops; cpulocal-cli's baseline.rs passes the same numbers). */
enum cl_index_mode {
	CL_CPU_ID = 0,
	CL_MM_CID = 1,
};

#define CL_READ_ONCE_U32(x) (*(const volatile uint32_t *)&(x))
#define CL_READ_ONCE_PTR(x) (*(__typeof__(x) const volatile *)&(x))
#define CL_LIKELY(x) __builtin_expect(!!(x), 1)

/* librseq's rseq_offset: a copy of glibc's __rseq_offset in a global of
 * this file, set by cl_area() before any loop runs. Every thread stores the
 * same value, so its accesses are relaxed atomics (plain loads and stores
 * on the targets here). */
static ptrdiff_t cl_rseq_offset;

/* The calling thread's area, or NULL when glibc did not register rseq for
 * the process or for this thread. */
static inline struct cl_rseq_abi *cl_area(void)
{
	if (&__rseq_size == NULL || &__rseq_offset == NULL || __rseq_size == 0)
		return NULL;
	__atomic_store_n(&cl_rseq_offset, __rseq_offset, __ATOMIC_RELAXED);
	struct cl_rseq_abi *rs =
		(struct cl_rseq_abi *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if ((int32_t)CL_READ_ONCE_U32(rs->cpu_id) < 0)
		return NULL; /* -1 unregistered, -2 registration failed */
	return rs;
}

/* 1 if the calling thread has a glibc-registered rseq area, else 0. */
int cl_c_rseq_available(void)
{
	return cl_area() != NULL;
}

/* 1 if the calling thread has a glibc-registered rseq area whose mm_cid
 * field the kernel keeps up to date, else 0: the kernel's feature size
 * (AT_RSEQ_FEATURE_SIZE) covers mm_cid, and so does the area glibc
 * registered. glibc versions that register the original 32-byte area
 * publish either 32 or the original feature size 20 as __rseq_size (Debian
 * 12's glibc 2.36 publishes 20), so both mean "32 bytes registered"; any
 * other value is the registered size itself. */
int cl_c_mm_cid_available(void)
{
	if (cl_area() == NULL)
		return 0;
	unsigned int registered = __rseq_size;
	if (registered == CL_RSEQ_ORIG_FEATURE_SIZE)
		registered = CL_RSEQ_ORIG_ALLOC_SIZE;
	if (registered < CL_RSEQ_MM_CID_END)
		return 0;
	return getauxval(CL_AT_RSEQ_FEATURE_SIZE) >= CL_RSEQ_MM_CID_END;
}

/* The area for a loop in `mode`, or NULL when this thread cannot run it. */
static struct cl_rseq_abi *cl_area_for(int mode)
{
	if (mode == CL_CPU_ID)
		return cl_area();
	if (mode == CL_MM_CID && cl_c_mm_cid_available())
		return cl_area();
	return NULL;
}

/* The slot index, read before a section (`mode` is a constant wherever
 * this is inlined, so the branch folds away). */
static inline __attribute__((always_inline)) uint32_t
cl_index(const struct cl_rseq_abi *rs, int mode)
{
	return mode == CL_MM_CID ? CL_READ_ONCE_U32(rs->mm_cid)
				 : CL_READ_ONCE_U32(rs->cpu_id_start);
}

/* How a loop finds the thread's area (the `area` argument of the loops). */
enum cl_area {
	CL_AREA_PER_OP = 0,
	CL_AREA_HOISTED = 1,
};

/* The area of the calling thread for one operation: `hoisted` itself, or,
 * with CL_AREA_PER_OP, found again as librseq's rseq_get_abi() finds it
 * (`area` is a constant wherever this is inlined). */
static inline __attribute__((always_inline)) struct cl_rseq_abi *
cl_op_area(struct cl_rseq_abi *hoisted, int area)
{
	if (area == CL_AREA_HOISTED)
		return hoisted;
	return (struct cl_rseq_abi *)((char *)__builtin_thread_pointer() +
				      __atomic_load_n(&cl_rseq_offset, __ATOMIC_RELAXED));
}

/* The field a section compares that index with, as an lvalue for its "m"
 * operand: cpu_id (word 1, offset 4) or mm_cid (word 6, offset 24). Indexing
 * the word array with a constant makes the operand a constant displacement
 * off the area pointer (`cmp idx, 4(%reg)`); a pointer to the field would
 * be hoisted out of the loop into a register of its own. */
#define CL_INDEX_FIELD(rs, mode) \
	((rs)->word[(mode) == CL_MM_CID ? 6 : 1])

/*
 * The pieces every critical section below shares. Each section is one asm
 * statement with four local labels:
 *
 *   3: the struct rseq_cs descriptor, in __rseq_cs (its address also goes to
 *      __rseq_cs_ptr_array, where tools find every descriptor):
 *      {version 0, flags 0, start_ip = 1f, post_commit_offset = 2f - 1f,
 *       abort_ip = 4f}
 *      lea 3b(%rip), %rax ; mov %rax, rseq_cs      arm (before start_ip)
 *   1: cmp idx, <cpu_id or mm_cid> ; jnz 4f         start_ip
 *      ... loads, compares, speculative stores ...
 *      <one store>                                  commit
 *   2:                                              post-commit
 *      ud1 + signature ; 4: jmp abort              (in __rseq_failure)
 *
 * The kernel moves the instruction pointer to 4: when the thread is
 * preempted, migrated or signalled while between 1: and 2:. A section
 * returns 0 when its commit ran, -1 after an abort, and 1 when one of its
 * compares failed (the section left before the commit, nothing stored
 * except the speculative stores that the section documents as harmless).
 * The asm operands: [idx] the index read before the section, [cur] the
 * area's field compared with it, [rseq_cs] the area's rseq_cs word. rax is
 * clobbered by the arming and free to use as scratch after it.
 */
#define CL_RSEQ_CS_DESCRIPTOR                 \
	".pushsection __rseq_cs, \"aw\"\n\t"  \
	".balign 32\n\t"                      \
	"3:\n\t"                              \
	".long 0x0, 0x0\n\t"                  \
	".quad 1f, (2f - 1f), 4f\n\t"         \
	".popsection\n\t"                     \
	".pushsection __rseq_cs_ptr_array, \"aw\"\n\t" \
	".quad 3b\n\t"                        \
	".popsection\n\t"

#define CL_RSEQ_ARM                     \
	"leaq 3b(%%rip), %%rax\n\t"     \
	"movq %%rax, %[rseq_cs]\n\t"

#define CL_RSEQ_START_CHECK_INDEX       \
	"1:\n\t"                        \
	"cmpl %[idx], %[cur]\n\t"       \
	"jnz 4f\n\t"

#define CL_RSEQ_POST_COMMIT_AND_ABORT   \
	"2:\n\t"                        \
	".pushsection __rseq_failure, \"ax\"\n\t" \
	".byte 0x0f, 0xb9, 0x3d\n\t"    \
	".long 0x53053053\n\t"          \
	"4:\n\t"                        \
	"jmp %l[abort]\n\t"             \
	".popsection\n\t"

#define CL_RSEQ_COMMON_INPUTS(rs, mode, idx)                        \
	[idx] "r"(idx), [cur] "m"(CL_INDEX_FIELD((rs), (mode))),    \
	[rseq_cs] "m"((rs)->rseq_cs)

/*
 * librseq's rseq_addv: *v += count on slot `idx`, or abort.
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      addq count, *v                               commit
 *   2:                                              post-commit
 */
static inline __attribute__((always_inline)) int
cl_rseq_addv(struct cl_rseq_abi *rs, int mode, uint32_t idx,
	     int64_t *v, int64_t count)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		/* final store */
		"addq %[count], %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		: /* gcc asm goto does not allow outputs */
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
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
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      cmpl $0, *fence ; jnz fenced
 *      addq count, *v                               commit
 *   2:                                              post-commit
 */
static inline __attribute__((always_inline)) int
cl_rseq_addv_fence(struct cl_rseq_abi *rs, int mode, uint32_t idx,
		   const uint32_t *fence, int64_t *v, int64_t count)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		"cmpl $0, %[fence]\n\t"
		"jnz %l[fenced]\n\t"
		/* final store */
		"addq %[count], %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		:
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
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

/*
 * librseq's rseq_cmpeqv_storev: if *v == expect, *v = newv; on slot `idx`.
 * The spinlock's lock and the list's push.
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      cmpq *v, expect ; jnz fail
 *      movq newv, *v                                commit
 *   2:                                              post-commit
 */
static inline __attribute__((always_inline)) int
cl_rseq_cmpeqv_storev(struct cl_rseq_abi *rs, int mode, uint32_t idx,
		      intptr_t *v, intptr_t expect, intptr_t newv)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		"cmpq %[v], %[expect]\n\t"
		"jnz %l[fail]\n\t"
		/* final store */
		"movq %[newv], %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		:
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
		  [v] "m"(*v),
		  [expect] "r"(expect),
		  [newv] "er"(newv)
		: "memory", "cc", "rax"
		: abort, fail);
	return 0;
abort:
	return -1;
fail:
	return 1;
}

/* A list node. `next` at offset 8 (the section reads it at that immediate
 * displacement), `data` first as in librseq's param_test. */
struct cl_node {
	intptr_t data;
	struct cl_node *next;
};

_Static_assert(offsetof(struct cl_node, next) == 8, "next after data");

/*
 * The list pop (librseq's rseq_cmpnev_storeoffp_load with NULL as the
 * value to avoid): head = *v; if head == NULL fail; *load = head;
 * *v = head->next; on slot `idx`. Returns 1 when the list is empty.
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      movq *v, %rax                                head
 *      testq %rax, %rax ; jz empty
 *      movq %rax, *load                             (speculative: a local)
 *      movq next(%rax), %rax
 *      movq %rax, *v                                commit
 *   2:                                              post-commit
 *
 * A node popped here is owned by the caller until it pushes it, so reading
 * head->next before the commit is safe: while the head word still holds
 * `head` on this slot, nobody else has popped it.
 */
static inline __attribute__((always_inline)) int
cl_rseq_pop_head(struct cl_rseq_abi *rs, int mode, uint32_t idx,
		 struct cl_node **v, struct cl_node **load)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		"movq %[v], %%rax\n\t"
		"testq %%rax, %%rax\n\t"
		"jz %l[empty]\n\t"
		"movq %%rax, %[load]\n\t"
		"movq %c[next_off](%%rax), %%rax\n\t"
		/* final store */
		"movq %%rax, %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		:
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
		  [v] "m"(*v),
		  [load] "m"(*load),
		  [next_off] "i"(offsetof(struct cl_node, next))
		: "memory", "cc", "rax"
		: abort, empty);
	return 0;
abort:
	return -1;
empty:
	return 1;
}

/*
 * librseq's rseq_cmpeqv_cmpeqv_storev: if *v == expect and *v2 == expect2,
 * *v = newv; on slot `idx`. The pointer buffer's pop (v = offset, v2 = the
 * top entry).
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      cmpq *v, expect ; jnz fail
 *      cmpq *v2, expect2 ; jnz fail
 *      movq newv, *v                                commit
 *   2:                                              post-commit
 */
static inline __attribute__((always_inline)) int
cl_rseq_cmpeqv_cmpeqv_storev(struct cl_rseq_abi *rs, int mode,
			     uint32_t idx, intptr_t *v, intptr_t expect,
			     const intptr_t *v2, intptr_t expect2, intptr_t newv)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		"cmpq %[v], %[expect]\n\t"
		"jnz %l[fail]\n\t"
		"cmpq %[v2], %[expect2]\n\t"
		"jnz %l[fail]\n\t"
		/* final store */
		"movq %[newv], %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		:
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
		  [v] "m"(*v),
		  [expect] "r"(expect),
		  [v2] "m"(*v2),
		  [expect2] "r"(expect2),
		  [newv] "r"(newv)
		: "memory", "cc", "rax"
		: abort, fail);
	return 0;
abort:
	return -1;
fail:
	return 1;
}

/*
 * librseq's rseq_cmpeqv_trystorev_storev: if *v == expect, *v2 = newv2
 * (speculative) then *v = newv (commit); on slot `idx`. The pointer
 * buffer's push (v = offset, v2 = the entry just above the top).
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      cmpq *v, expect ; jnz fail
 *      movq newv2, *v2                              speculative
 *      movq newv, *v                                commit
 *   2:                                              post-commit
 *
 * The speculative store is harmless if the section aborts: the entry is
 * above the top, so no one reads it until a commit moves the top past it,
 * and that commit's own section stores it first.
 */
static inline __attribute__((always_inline)) int
cl_rseq_cmpeqv_trystorev_storev(struct cl_rseq_abi *rs, int mode,
				uint32_t idx, intptr_t *v, intptr_t expect,
				intptr_t *v2, intptr_t newv2, intptr_t newv)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		"cmpq %[v], %[expect]\n\t"
		"jnz %l[fail]\n\t"
		/* try store */
		"movq %[newv2], %[v2]\n\t"
		/* final store */
		"movq %[newv], %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		:
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
		  [v] "m"(*v),
		  [expect] "r"(expect),
		  [v2] "m"(*v2),
		  [newv2] "r"(newv2),
		  [newv] "r"(newv)
		: "memory", "cc", "rax"
		: abort, fail);
	return 0;
abort:
	return -1;
fail:
	return 1;
}

/* A memcpy buffer item: 16 bytes, copied whole in and out of the buffer. */
struct cl_item {
	intptr_t data1;
	uint64_t data2;
};

_Static_assert(sizeof(struct cl_item) == 16, "two 8-byte words");

/*
 * librseq's rseq_cmpeqv_trymemcpy_storev: if *v == expect, copy the 16
 * bytes at src to dst (speculative) then *v = newv (commit); on slot `idx`.
 * The memcpy buffer's pop (src = the top item, dst = a local) and push
 * (src = a local, dst = the item just above the top). librseq copies
 * bytewise; this copies the two 8-byte words, as a careful C programmer
 * who knows the item size does.
 *
 *   1: cmp idx, cur ; jnz 4f                        start_ip
 *      cmpq *v, expect ; jnz fail
 *      movq 0(src), %rax ; movq %rax, 0(dst)        speculative
 *      movq 8(src), %rax ; movq %rax, 8(dst)        speculative
 *      movq newv, *v                                commit
 *   2:                                              post-commit
 *
 * An aborted copy is harmless: into a local it is simply redone, and above
 * the top of the buffer no one reads it (as in the pointer buffer's push).
 */
static inline __attribute__((always_inline)) int
cl_rseq_cmpeqv_copy16_storev(struct cl_rseq_abi *rs, int mode,
			     uint32_t idx, intptr_t *v, intptr_t expect,
			     struct cl_item *dst, const struct cl_item *src,
			     intptr_t newv)
{
	__asm__ __volatile__ goto(
		CL_RSEQ_CS_DESCRIPTOR
		CL_RSEQ_ARM
		CL_RSEQ_START_CHECK_INDEX
		"cmpq %[v], %[expect]\n\t"
		"jnz %l[fail]\n\t"
		/* try memcpy, two words */
		"movq 0(%[src]), %%rax\n\t"
		"movq %%rax, 0(%[dst])\n\t"
		"movq 8(%[src]), %%rax\n\t"
		"movq %%rax, 8(%[dst])\n\t"
		/* final store */
		"movq %[newv], %[v]\n\t"
		CL_RSEQ_POST_COMMIT_AND_ABORT
		:
		: CL_RSEQ_COMMON_INPUTS(rs, mode, idx),
		  [v] "m"(*v),
		  [expect] "r"(expect),
		  [dst] "r"(dst),
		  [src] "r"(src),
		  [newv] "r"(newv)
		: "memory", "cc", "rax"
		: abort, fail);
	return 0;
abort:
	return -1;
fail:
	return 1;
}

/*
 * Emits the four copies of a loop body, `cl_<name>_body(s, iters, rs0,
 * mode, area)` (always_inline), with `mode` and `area` constants in each,
 * and the exported `cl_c_<name>_loop(s, iters, mode, area)` that checks the
 * area once and runs the copy for `mode` and `area`.
 */
#define CL_DEFINE_LOOP_COPY(name, type, m, a)                                  \
	static __attribute__((noinline)) uint64_t                              \
	cl_##name##_loop_##m##_##a(type *s, uint64_t iters,                    \
				   struct cl_rseq_abi *rs)                     \
	{                                                                      \
		return cl_##name##_body(s, iters, rs, m, a);                   \
	}
#define CL_DEFINE_LOOPS(name, type)                                            \
	CL_DEFINE_LOOP_COPY(name, type, CL_CPU_ID, CL_AREA_PER_OP)             \
	CL_DEFINE_LOOP_COPY(name, type, CL_CPU_ID, CL_AREA_HOISTED)            \
	CL_DEFINE_LOOP_COPY(name, type, CL_MM_CID, CL_AREA_PER_OP)             \
	CL_DEFINE_LOOP_COPY(name, type, CL_MM_CID, CL_AREA_HOISTED)            \
	uint64_t cl_c_##name##_loop(type *s, uint64_t iters, int mode, int area) \
	{                                                                      \
		struct cl_rseq_abi *rs = cl_area_for(mode);                    \
		if (rs == NULL)                                                \
			return UINT64_MAX;                                     \
		if (mode == CL_MM_CID)                                         \
			return area == CL_AREA_HOISTED                         \
				? cl_##name##_loop_CL_MM_CID_CL_AREA_HOISTED(s, iters, rs) \
				: cl_##name##_loop_CL_MM_CID_CL_AREA_PER_OP(s, iters, rs); \
		return area == CL_AREA_HOISTED                                 \
			? cl_##name##_loop_CL_CPU_ID_CL_AREA_HOISTED(s, iters, rs) \
			: cl_##name##_loop_CL_CPU_ID_CL_AREA_PER_OP(s, iters, rs); \
	}

/* Slots per structure: every structure has one 128-byte-aligned slot per
 * index, so two CPUs (or two concurrency ids) never share a cache line.
 * There is no bounds check on the index (librseq has none either): the
 * caller allocates `nslots` >= the number of possible CPUs, and the kernel
 * keeps both cpu_id_start and mm_cid below that. */
#define CL_SLOT_ALIGN 128

/* Items each slot of the list and the buffers starts with. */
#define CL_ITEMS_PER_SLOT 100

/* A zeroed structure: a 128-byte header (`header` is its size, the flexible
 * array after it aligned to 128) and `n` slots of `slot` bytes; NULL on
 * overflow or out of memory. */
static void *cl_alloc_slots(size_t header, size_t slot, size_t n)
{
	if (n > (SIZE_MAX - header) / slot)
		return NULL;
	size_t bytes = header + n * slot;
	void *p = aligned_alloc(CL_SLOT_ALIGN, bytes);
	if (p != NULL)
		memset(p, 0, bytes);
	return p;
}

/* ------------------------------------------------------------------------
 * The per-CPU increment (counter)
 * ------------------------------------------------------------------------ */

/* One CPU's slot: a 32-bit word (used only by the fence-check variant, the
 * layout of cpulocal's Slot<AtomicI64>), then the value, alone in 128 bytes. */
struct cl_slot {
	uint32_t fence;
	int64_t v;
} __attribute__((aligned(CL_SLOT_ALIGN)));

/* The per-CPU array. */
struct cl_slots {
	size_t ncpus;
	struct cl_slot slot[];
};

_Static_assert(sizeof(struct cl_slot) == 128, "slot must fill 128 bytes");
_Static_assert(offsetof(struct cl_slot, v) == 8, "value after the fence word");
_Static_assert(offsetof(struct cl_slots, slot) == 128, "slots start aligned");

/* A zeroed array of `ncpus` slots (ncpus >= the number of possible CPUs), or
 * NULL when out of memory. Free with cl_c_slots_free. */
struct cl_slots *cl_c_slots_new(size_t ncpus)
{
	struct cl_slots *s =
		cl_alloc_slots(sizeof(struct cl_slots), sizeof(struct cl_slot), ncpus);
	if (s != NULL)
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
 * Adds 1 to the current slot `iters` times, retrying aborted sections
 * (param_test's -T i).
 *
 * Per operation, as librseq's users write it: find the area (or not, see
 * enum cl_area), read the index, index the array, run the section.
 */
static inline __attribute__((always_inline)) uint64_t
cl_counter_body(struct cl_slots *s, uint64_t iters, struct cl_rseq_abi *rs0,
		int mode, int area)
{
	struct cl_slot *slot = s->slot;
	uint64_t aborts = 0;
	for (uint64_t i = 0; i < iters; i++) {
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			if (CL_LIKELY(cl_rseq_addv(rs, mode, idx, &slot[idx].v, 1) == 0))
				break;
			aborts++;
		}
	}
	return aborts;
}

CL_DEFINE_LOOPS(counter, struct cl_slots)

/*
 * The counter loop indexed by cpu_id (the loop PerCpuCounter::add is
 * measured against): cl_c_counter_loop(s, iters, CL_CPU_ID), with the loop
 * inlined here.
 */
uint64_t cl_c_rseq_add_loop(struct cl_slots *s, uint64_t iters)
{
	struct cl_rseq_abi *rs = cl_area();
	if (rs == NULL)
		return UINT64_MAX;
	return cl_counter_body(s, iters, rs, CL_CPU_ID, CL_AREA_HOISTED);
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
			int r = cl_rseq_addv_fence(rs, CL_CPU_ID, cpu, &slot[cpu].fence,
						   &slot[cpu].v, 1);
			if (CL_LIKELY(r == 0))
				break;
			if (r > 0)
				return UINT64_MAX; /* a fence is never set in this file */
			aborts++;
		}
	}
	return aborts;
}

/* ------------------------------------------------------------------------
 * Spinlock
 * ------------------------------------------------------------------------ */

/* One slot: the lock word (0 free, 1 held) and the count it protects. */
struct cl_lock_slot {
	intptr_t lock;
	intptr_t count;
} __attribute__((aligned(CL_SLOT_ALIGN)));

struct cl_spinlock {
	size_t nslots;
	struct cl_lock_slot slot[];
};

_Static_assert(sizeof(struct cl_lock_slot) == 128, "slot must fill 128 bytes");
_Static_assert(offsetof(struct cl_spinlock, slot) == 128, "slots start aligned");

/* Zeroed (every lock free, every count 0); NULL when out of memory. */
struct cl_spinlock *cl_c_spinlock_new(size_t nslots)
{
	struct cl_spinlock *s = cl_alloc_slots(sizeof(struct cl_spinlock),
					       sizeof(struct cl_lock_slot), nslots);
	if (s != NULL)
		s->nslots = nslots;
	return s;
}

void cl_c_spinlock_free(struct cl_spinlock *s)
{
	free(s);
}

/* The sum of the counts. Not concurrent-safe: call it when no loop runs. */
int64_t cl_c_spinlock_sum(const struct cl_spinlock *s)
{
	int64_t sum = 0;
	for (size_t i = 0; i < s->nslots; i++)
		sum += s->slot[i].count;
	return sum;
}

/*
 * `iters` times (param_test's -T s): take the current slot's lock with a
 * section (lock == 0 ? lock = 1 : fail; an abort or a held lock re-reads the
 * index and retries), count++ under it, release it with a store-release of
 * 0 to the same slot's lock word (the thread may have moved to another CPU
 * by then; the slot stays locked until it does).
 */
static inline __attribute__((always_inline)) uint64_t
cl_spinlock_body(struct cl_spinlock *s, uint64_t iters, struct cl_rseq_abi *rs0,
		 int mode, int area)
{
	struct cl_lock_slot *slot = s->slot;
	uint64_t retries = 0;
	for (uint64_t i = 0; i < iters; i++) {
		struct cl_lock_slot *l;
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			l = &slot[idx];
			if (CL_LIKELY(cl_rseq_cmpeqv_storev(rs, mode, idx, &l->lock, 0, 1) == 0))
				break;
			retries++;
		}
		/* Acquire after the control dependency on the section's compare:
		 * x86 does not reorder loads with older loads, nor stores with
		 * older loads, so a compiler barrier is enough. */
		__asm__ __volatile__("" ::: "memory");
		l->count++;
		__atomic_store_n(&l->lock, 0, __ATOMIC_RELEASE);
	}
	return retries;
}

CL_DEFINE_LOOPS(spinlock, struct cl_spinlock)

/* ------------------------------------------------------------------------
 * List
 * ------------------------------------------------------------------------ */

/* One slot: the head of a singly linked LIFO of struct cl_node (NULL when
 * empty). */
struct cl_list_slot {
	struct cl_node *head;
} __attribute__((aligned(CL_SLOT_ALIGN)));

struct cl_list {
	size_t nslots;
	struct cl_node *nodes; /* all nodes, one allocation (freed as one) */
	struct cl_list_slot slot[];
};

_Static_assert(sizeof(struct cl_list_slot) == 128, "slot must fill 128 bytes");
_Static_assert(offsetof(struct cl_list, slot) == 128, "slots start aligned");

/* Every slot's list holds CL_ITEMS_PER_SLOT nodes, data 1..100 from the
 * head down; NULL when out of memory. The nodes are allocated together, so
 * cl_c_list_free frees them whatever state the lists are in. */
struct cl_list *cl_c_list_new(size_t nslots)
{
	if (nslots > SIZE_MAX / CL_ITEMS_PER_SLOT / sizeof(struct cl_node))
		return NULL;
	struct cl_list *l = cl_alloc_slots(sizeof(struct cl_list),
					   sizeof(struct cl_list_slot), nslots);
	if (l == NULL)
		return NULL;
	l->nslots = nslots;
	l->nodes = malloc(nslots * CL_ITEMS_PER_SLOT * sizeof(struct cl_node));
	if (l->nodes == NULL && nslots != 0) {
		free(l);
		return NULL;
	}
	for (size_t i = 0; i < nslots; i++) {
		struct cl_node *head = NULL;
		for (intptr_t j = CL_ITEMS_PER_SLOT; j >= 1; j--) {
			struct cl_node *n = &l->nodes[i * CL_ITEMS_PER_SLOT + (size_t)j - 1];
			n->data = j;
			n->next = head;
			head = n;
		}
		l->slot[i].head = head;
	}
	return l;
}

void cl_c_list_free(struct cl_list *l)
{
	if (l == NULL)
		return;
	free(l->nodes);
	free(l);
}

/* The sum of `data` over every list, and in *count the number of nodes.
 * Not concurrent-safe: call it when no loop runs. A walk stops after as
 * many nodes as were allocated, so a corrupted (cyclic) list still ends. */
int64_t cl_c_list_sum(const struct cl_list *l, uint64_t *count)
{
	uint64_t limit = (uint64_t)l->nslots * CL_ITEMS_PER_SLOT + 1;
	uint64_t n = 0;
	int64_t sum = 0;
	for (size_t i = 0; i < l->nslots; i++) {
		for (const struct cl_node *p = l->slot[i].head; p != NULL && n < limit;
		     p = p->next) {
			sum += p->data;
			n++;
		}
	}
	*count = n;
	return sum;
}

/*
 * `iters` times (param_test's -T l): pop the head of the current slot's
 * list, and if there was one, push it on the (then) current slot's list:
 * read the head word, node->next = it, section: head == it ? head = node :
 * fail. Aborted and failed sections re-read the index and retry.
 */
static inline __attribute__((always_inline)) uint64_t
cl_list_body(struct cl_list *l, uint64_t iters, struct cl_rseq_abi *rs0,
	     int mode, int area)
{
	struct cl_list_slot *slot = l->slot;
	uint64_t retries = 0;
	for (uint64_t i = 0; i < iters; i++) {
		struct cl_node *node;
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			int r = cl_rseq_pop_head(rs, mode, idx, &slot[idx].head, &node);
			if (CL_LIKELY(r == 0))
				break;
			if (r > 0)
				goto next; /* empty: nothing to push */
			retries++;
		}
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			struct cl_node *expect = CL_READ_ONCE_PTR(slot[idx].head);
			node->next = expect;
			if (CL_LIKELY(cl_rseq_cmpeqv_storev(rs, mode, idx,
							    (intptr_t *)&slot[idx].head,
							    (intptr_t)expect,
							    (intptr_t)node) == 0))
				break;
			retries++;
		}
	next:;
	}
	return retries;
}

CL_DEFINE_LOOPS(list, struct cl_list)

/* ------------------------------------------------------------------------
 * Pointer buffer
 * ------------------------------------------------------------------------ */

/* One slot: a stack of node pointers, array[0 .. offset) in use, room for
 * buflen. */
struct cl_ptrbuf_slot {
	intptr_t offset;
	intptr_t buflen;
	struct cl_node **array;
} __attribute__((aligned(CL_SLOT_ALIGN)));

struct cl_ptrbuf {
	size_t nslots;
	struct cl_node *nodes; /* all nodes, one allocation */
	struct cl_ptrbuf_slot slot[];
};

_Static_assert(sizeof(struct cl_ptrbuf_slot) == 128, "slot must fill 128 bytes");
_Static_assert(offsetof(struct cl_ptrbuf, slot) == 128, "slots start aligned");

void cl_c_ptrbuf_free(struct cl_ptrbuf *b)
{
	if (b == NULL)
		return;
	for (size_t i = 0; i < b->nslots; i++)
		free(b->slot[i].array);
	free(b->nodes);
	free(b);
}

/* Every slot holds CL_ITEMS_PER_SLOT node pointers (data 1..100, 100 on top)
 * and has room for nslots * CL_ITEMS_PER_SLOT, every node there is, so a
 * push never finds it full; NULL when out of memory. */
struct cl_ptrbuf *cl_c_ptrbuf_new(size_t nslots)
{
	if (nslots > (size_t)INTPTR_MAX / CL_ITEMS_PER_SLOT / sizeof(struct cl_node))
		return NULL;
	size_t total = nslots * CL_ITEMS_PER_SLOT;
	struct cl_ptrbuf *b = cl_alloc_slots(sizeof(struct cl_ptrbuf),
					     sizeof(struct cl_ptrbuf_slot), nslots);
	if (b == NULL)
		return NULL;
	b->nslots = nslots;
	b->nodes = malloc(total * sizeof(struct cl_node));
	if (b->nodes == NULL && total != 0) {
		free(b);
		return NULL;
	}
	for (size_t i = 0; i < nslots; i++) {
		struct cl_ptrbuf_slot *s = &b->slot[i];
		s->array = malloc(total * sizeof(struct cl_node *));
		if (s->array == NULL) {
			cl_c_ptrbuf_free(b);
			return NULL;
		}
		s->buflen = (intptr_t)total;
		for (size_t j = 0; j < CL_ITEMS_PER_SLOT; j++) {
			struct cl_node *n = &b->nodes[i * CL_ITEMS_PER_SLOT + j];
			n->data = (intptr_t)j + 1;
			n->next = NULL;
			s->array[j] = n;
		}
		s->offset = CL_ITEMS_PER_SLOT;
	}
	return b;
}

/* The sum of `data` over every node in the buffer, and in *count the
 * number of entries. Not concurrent-safe: call it when no loop runs. */
int64_t cl_c_ptrbuf_sum(const struct cl_ptrbuf *b, uint64_t *count)
{
	uint64_t n = 0;
	int64_t sum = 0;
	for (size_t i = 0; i < b->nslots; i++) {
		const struct cl_ptrbuf_slot *s = &b->slot[i];
		for (intptr_t j = 0; j < s->offset && j < s->buflen; j++) {
			sum += s->array[j]->data;
			n++;
		}
	}
	*count = n;
	return sum;
}

/*
 * `iters` times (param_test's -T b): pop the top pointer of the current
 * slot (read offset; 0 is empty; read head = array[offset - 1]; section:
 * offset unchanged and array[offset - 1] still head ? offset - 1 : fail),
 * and if there was one, push it on the (then) current slot (read offset;
 * section: offset unchanged ? array[offset] = node, offset + 1 : fail).
 * Aborted and failed sections re-read the index and retry.
 */
static inline __attribute__((always_inline)) uint64_t
cl_ptrbuf_body(struct cl_ptrbuf *b, uint64_t iters, struct cl_rseq_abi *rs0,
	       int mode, int area)
{
	struct cl_ptrbuf_slot *slot = b->slot;
	uint64_t retries = 0;
	for (uint64_t i = 0; i < iters; i++) {
		struct cl_node *node;
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			struct cl_ptrbuf_slot *s = &slot[idx];
			intptr_t offset = CL_READ_ONCE_PTR(s->offset);
			if (offset == 0)
				goto next; /* empty: nothing to push */
			node = CL_READ_ONCE_PTR(s->array[offset - 1]);
			if (CL_LIKELY(cl_rseq_cmpeqv_cmpeqv_storev(
					      rs, mode, idx, &s->offset, offset,
					      (const intptr_t *)&s->array[offset - 1],
					      (intptr_t)node, offset - 1) == 0))
				break;
			retries++;
		}
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			struct cl_ptrbuf_slot *s = &slot[idx];
			intptr_t offset = CL_READ_ONCE_PTR(s->offset);
			if (offset == s->buflen)
				abort(); /* cannot happen: buflen is every node there is */
			if (CL_LIKELY(cl_rseq_cmpeqv_trystorev_storev(
					      rs, mode, idx, &s->offset, offset,
					      (intptr_t *)&s->array[offset],
					      (intptr_t)node, offset + 1) == 0))
				break;
			retries++;
		}
	next:;
	}
	return retries;
}

CL_DEFINE_LOOPS(ptrbuf, struct cl_ptrbuf)

/* ------------------------------------------------------------------------
 * Memcpy buffer
 * ------------------------------------------------------------------------ */

/* One slot: a stack of items stored inline, array[0 .. offset) in use,
 * room for buflen. */
struct cl_membuf_slot {
	intptr_t offset;
	intptr_t buflen;
	struct cl_item *array;
} __attribute__((aligned(CL_SLOT_ALIGN)));

struct cl_membuf {
	size_t nslots;
	struct cl_membuf_slot slot[];
};

_Static_assert(sizeof(struct cl_membuf_slot) == 128, "slot must fill 128 bytes");
_Static_assert(offsetof(struct cl_membuf, slot) == 128, "slots start aligned");

void cl_c_membuf_free(struct cl_membuf *b)
{
	if (b == NULL)
		return;
	for (size_t i = 0; i < b->nslots; i++)
		free(b->slot[i].array);
	free(b);
}

/* Every slot holds CL_ITEMS_PER_SLOT items ({j, j} for j = 1..100, 100 on
 * top) and has room for nslots * CL_ITEMS_PER_SLOT, every item there is, so
 * a push never finds it full; NULL when out of memory. */
struct cl_membuf *cl_c_membuf_new(size_t nslots)
{
	if (nslots > (size_t)INTPTR_MAX / CL_ITEMS_PER_SLOT / sizeof(struct cl_item))
		return NULL;
	size_t total = nslots * CL_ITEMS_PER_SLOT;
	struct cl_membuf *b = cl_alloc_slots(sizeof(struct cl_membuf),
					     sizeof(struct cl_membuf_slot), nslots);
	if (b == NULL)
		return NULL;
	b->nslots = nslots;
	for (size_t i = 0; i < nslots; i++) {
		struct cl_membuf_slot *s = &b->slot[i];
		s->array = malloc(total * sizeof(struct cl_item));
		if (s->array == NULL) {
			cl_c_membuf_free(b);
			return NULL;
		}
		s->buflen = (intptr_t)total;
		for (size_t j = 0; j < CL_ITEMS_PER_SLOT; j++) {
			s->array[j].data1 = (intptr_t)j + 1;
			s->array[j].data2 = (uint64_t)j + 1;
		}
		s->offset = CL_ITEMS_PER_SLOT;
	}
	return b;
}

/* The sum of data1 + data2 over every item in the buffer, and in *count the
 * number of items. Not concurrent-safe: call it when no loop runs. */
int64_t cl_c_membuf_sum(const struct cl_membuf *b, uint64_t *count)
{
	uint64_t n = 0;
	int64_t sum = 0;
	for (size_t i = 0; i < b->nslots; i++) {
		const struct cl_membuf_slot *s = &b->slot[i];
		for (intptr_t j = 0; j < s->offset && j < s->buflen; j++) {
			sum += s->array[j].data1 + (int64_t)s->array[j].data2;
			n++;
		}
	}
	*count = n;
	return sum;
}

/*
 * `iters` times (param_test's -T m): pop the top item of the current slot
 * into a local (read offset; 0 is empty; section: offset unchanged ? copy
 * array[offset - 1] out, offset - 1 : fail), and if there was one, push it
 * on the (then) current slot (read offset; section: offset unchanged ? copy
 * it to array[offset], offset + 1 : fail). Aborted and failed sections
 * re-read the index and retry.
 */
static inline __attribute__((always_inline)) uint64_t
cl_membuf_body(struct cl_membuf *b, uint64_t iters, struct cl_rseq_abi *rs0,
	       int mode, int area)
{
	struct cl_membuf_slot *slot = b->slot;
	uint64_t retries = 0;
	for (uint64_t i = 0; i < iters; i++) {
		struct cl_item item;
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			struct cl_membuf_slot *s = &slot[idx];
			intptr_t offset = CL_READ_ONCE_PTR(s->offset);
			if (offset == 0)
				goto next; /* empty: nothing to push */
			if (CL_LIKELY(cl_rseq_cmpeqv_copy16_storev(
					      rs, mode, idx, &s->offset, offset, &item,
					      &s->array[offset - 1], offset - 1) == 0))
				break;
			retries++;
		}
		for (;;) {
			struct cl_rseq_abi *rs = cl_op_area(rs0, area);
			uint32_t idx = cl_index(rs, mode);
			struct cl_membuf_slot *s = &slot[idx];
			intptr_t offset = CL_READ_ONCE_PTR(s->offset);
			if (offset == s->buflen)
				abort(); /* cannot happen: buflen is every item there is */
			if (CL_LIKELY(cl_rseq_cmpeqv_copy16_storev(
					      rs, mode, idx, &s->offset, offset,
					      &s->array[offset], &item, offset + 1) == 0))
				break;
			retries++;
		}
	next:;
	}
	return retries;
}

CL_DEFINE_LOOPS(membuf, struct cl_membuf)
