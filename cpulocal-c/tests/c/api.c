/*
 * api.c - every function of cpulocal.h from C: what it does with good
 * arguments, and the documented error for each bad one (a CPU out of range,
 * NULL where allowed and where not, bad sizes, modes and orders), without a
 * crash. The thread is pinned to one CPU, so "this CPU's slot" is known.
 *
 * Prints "api: N checks, M failed" and exits 0 only if none failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpulocal.h"
#include "check.h"

#define container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))

static unsigned here;  /* the CPU this thread is pinned to */
static unsigned ncpus; /* cpulocal_possible_cpus() */

static void pin_to_first_allowed_cpu(void)
{
	cpu_set_t set;
	CHECK(sched_getaffinity(0, sizeof set, &set) == 0);
	unsigned cpu = 0;
	while (!CPU_ISSET(cpu, &set))
		cpu++;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	CHECK(sched_setaffinity(0, sizeof set, &set) == 0);
	sched_yield();
	here = cpu;
}

static void test_general(void)
{
	ncpus = cpulocal_possible_cpus();
	CHECK(ncpus >= 1);
	CHECK_EQ(cpulocal_current_cpu(), here);
	const char *engine = cpulocal_engine();
	CHECK(engine != NULL);
	CHECK(strcmp(engine, "rseq") == 0 || strcmp(engine, "fenced") == 0);
	printf("engine: %s, %u possible CPUs, pinned to CPU %u\n", engine, ncpus, here);
}

static void test_counter(void)
{
	cpulocal_counter *c = cpulocal_counter_new();
	CHECK(c != NULL);
	CHECK_EQ(cpulocal_counter_cpus(c), ncpus);
	CHECK_EQ(cpulocal_counter_index(c), CPULOCAL_INDEX_CPU);
	cpulocal_counter_add(c, 5);
	cpulocal_counter_add(c, -2);
	CHECK_EQ(cpulocal_counter_sum(c), 3);
	CHECK_EQ(cpulocal_counter_add_on(c, 0, 10), 0);
	CHECK_EQ(cpulocal_counter_add_on(c, ncpus - 1, 100), 0);
	CHECK_EQ(cpulocal_counter_add_on(c, ncpus, 1), -ERANGE);
	CHECK_EQ(cpulocal_counter_add_on(c, UINT_MAX, 1), -ERANGE);
	CHECK_EQ(cpulocal_counter_sum(c), 113);

	int64_t slots[1024];
	size_t n = cpulocal_counter_per_cpu(c, slots, 1024);
	CHECK_EQ(n, ncpus);
	int64_t total = 0;
	for (size_t i = 0; i < n && i < 1024; i++)
		total += slots[i];
	CHECK_EQ(total, 113);
	CHECK(slots[here] >= 3);
	CHECK_EQ(cpulocal_counter_per_cpu(c, NULL, 0), ncpus);
	CHECK_EQ(cpulocal_counter_per_cpu(c, NULL, 4), 0);

	cpulocal_stats s;
	CHECK_EQ(cpulocal_counter_stats(c, &s), 0);
	if (ncpus > 1)
		CHECK(s.fenced >= 1); /* the add_on to a CPU not this one */
	CHECK_EQ(cpulocal_counter_take(c), 113);
	CHECK_EQ(cpulocal_counter_sum(c), 0);

	/* NULL where allowed (documented values) and where not (-EINVAL). */
	cpulocal_counter_add(NULL, 1);
	CHECK_EQ(cpulocal_counter_add_on(NULL, 0, 1), -EINVAL);
	CHECK_EQ(cpulocal_counter_sum(NULL), 0);
	CHECK_EQ(cpulocal_counter_take(NULL), 0);
	CHECK_EQ(cpulocal_counter_cpus(NULL), 0);
	CHECK_EQ(cpulocal_counter_index(NULL), -EINVAL);
	CHECK_EQ(cpulocal_counter_stats(NULL, &s), -EINVAL);
	CHECK_EQ(cpulocal_counter_stats(c, NULL), -EINVAL);
	cpulocal_counter_free(NULL);
	cpulocal_counter_free(c);

	errno = 0;
	CHECK(cpulocal_counter_new_with_index(5) == NULL);
	CHECK_EQ(errno, EINVAL);
	cpulocal_counter *m = cpulocal_counter_new_with_index(CPULOCAL_INDEX_MM_CID);
	CHECK(m != NULL);
	CHECK(cpulocal_counter_cpus(m) >= 1 && cpulocal_counter_cpus(m) <= ncpus);
	cpulocal_counter_add(m, 2);
	CHECK_EQ(cpulocal_counter_sum(m), 2);
	cpulocal_counter_free(m);
}

/* One word per slot, each on a line of its own. */
struct slot {
	uintptr_t w[8];
} __attribute__((aligned(64)));

static void test_domain(void)
{
	errno = 0;
	CHECK(cpulocal_domain_new(7) == NULL);
	CHECK_EQ(errno, EINVAL);
	cpulocal_domain *d = cpulocal_domain_new(CPULOCAL_INDEX_CPU);
	CHECK(d != NULL);
	CHECK_EQ(cpulocal_domain_cpus(d), ncpus);
	CHECK_EQ(cpulocal_domain_index(d), CPULOCAL_INDEX_CPU);
	CHECK_EQ(cpulocal_domain_current(d), here);
	struct slot *slots = aligned_alloc(64, ncpus * sizeof *slots);
	CHECK(slots != NULL);
	memset(slots, 0, ncpus * sizeof *slots);
	uintptr_t *v = &slots[here].w[0];
	uintptr_t *v2 = &slots[here].w[1];

	/* cbne_store: stored once, then the compare fails. */
	CHECK_EQ(cpulocal_domain_cbne_store(d, here, v, 0, 5, CPULOCAL_ORDER_RELAXED), 0);
	CHECK_EQ(cpulocal_domain_cbne_store(d, here, v, 0, 6, CPULOCAL_ORDER_RELEASE),
		 CPULOCAL_COMPARE_FAILED);
	CHECK_EQ(*v, 5);
	/* Another CPU's slot, from here: the fenced path. */
	unsigned other = (here + 1) % ncpus;
	CHECK_EQ(cpulocal_domain_cbne_store(d, other, &slots[other].w[0], 0, 9,
					    CPULOCAL_ORDER_RELAXED), 0);
	CHECK_EQ(slots[other].w[0], 9);
	/* Bad arguments. */
	CHECK_EQ(cpulocal_domain_cbne_store(d, ncpus, v, 5, 6, 0), -ERANGE);
	CHECK_EQ(cpulocal_domain_cbne_store(NULL, here, v, 5, 6, 0), -EINVAL);
	CHECK_EQ(cpulocal_domain_cbne_store(d, here, NULL, 5, 6, 0), -EINVAL);
	CHECK_EQ(cpulocal_domain_cbne_store(d, here, (uintptr_t *)((char *)v + 1), 5, 6, 0),
		 -EINVAL);
	CHECK_EQ(cpulocal_domain_cbne_store(d, here, v, 5, 6, 2), -EINVAL);
	CHECK_EQ(*v, 5);

	/* add_store */
	CHECK_EQ(cpulocal_domain_add_store(d, here, v, 3, CPULOCAL_ORDER_RELEASE), 0);
	CHECK_EQ(cpulocal_domain_add_store(d, here, v, -1, CPULOCAL_ORDER_RELAXED), 0);
	CHECK_EQ(*v, 7);
	CHECK_EQ(cpulocal_domain_add_store(d, ncpus, v, 1, 0), -ERANGE);
	CHECK_EQ(cpulocal_domain_add_store(d, here, NULL, 1, 0), -EINVAL);
	CHECK_EQ(cpulocal_domain_add_store(d, here, v, 1, -1), -EINVAL);

	/* percpu_addv: the word of this CPU's slot in an array of slots. */
	CHECK_EQ(cpulocal_percpu_addv(d, &slots[0].w[2], sizeof *slots, 4), 0);
	CHECK_EQ(slots[here].w[2], 4);
	CHECK_EQ(cpulocal_percpu_addv(NULL, &slots[0].w[2], sizeof *slots, 4), -EINVAL);
	CHECK_EQ(cpulocal_percpu_addv(d, NULL, sizeof *slots, 4), -EINVAL);
	CHECK_EQ(cpulocal_percpu_addv(d, &slots[0].w[2], 3, 4), -EINVAL);
	CHECK_EQ(cpulocal_percpu_addv(d, (char *)&slots[0].w[2] + 4, sizeof *slots, 4), -EINVAL);
	CHECK_EQ(slots[here].w[2], 4);

	/* List pop: head -> a -> b. */
	uintptr_t b[1] = {0}, a[1] = {(uintptr_t)b};
	uintptr_t *head = &slots[here].w[3];
	*head = (uintptr_t)a;
	uintptr_t popped = 0;
	CHECK_EQ(cpulocal_domain_cbeq_store_add_load_store(d, here, head, 0, 0, &popped), 0);
	CHECK_EQ(popped, (uintptr_t)a);
	CHECK_EQ(*head, (uintptr_t)b);
	CHECK_EQ(cpulocal_domain_cbeq_store_add_load_store(d, here, head, 0, 0, &popped), 0);
	CHECK_EQ(popped, (uintptr_t)b);
	CHECK_EQ(*head, 0);
	popped = 42;
	CHECK_EQ(cpulocal_domain_cbeq_store_add_load_store(d, here, head, 0, 0, &popped),
		 CPULOCAL_COMPARE_FAILED);
	CHECK_EQ(popped, 42);
	CHECK_EQ(cpulocal_domain_cbeq_store_add_load_store(d, here, head, 0, 0, NULL), -EINVAL);
	CHECK_EQ(cpulocal_domain_cbeq_store_add_load_store(d, ncpus, head, 0, 0, &popped), -ERANGE);

	/* cbne_store_store */
	CHECK_EQ(cpulocal_domain_cbne_store_store(d, here, v, 7, v2, 70, 8,
						  CPULOCAL_ORDER_RELEASE), 0);
	CHECK(*v == 8 && *v2 == 70);
	CHECK_EQ(cpulocal_domain_cbne_store_store(d, here, v, 7, v2, 71, 9, 0),
		 CPULOCAL_COMPARE_FAILED);
	CHECK(*v == 8 && *v2 == 70);
	CHECK_EQ(cpulocal_domain_cbne_store_store(d, here, v, 8, NULL, 71, 9, 0), -EINVAL);

	/* cbne_memcpy_store */
	char item[16] = "sixteen bytes!!", into[16];
	memset(into, 0, sizeof into);
	CHECK_EQ(cpulocal_domain_cbne_memcpy_store(d, here, v, 8, into, item, 16, 9,
						   CPULOCAL_ORDER_RELEASE), 0);
	CHECK(memcmp(into, item, 16) == 0 && *v == 9);
	memset(into, 0, sizeof into);
	CHECK_EQ(cpulocal_domain_cbne_memcpy_store(d, here, v, 8, into, item, 16, 10, 0),
		 CPULOCAL_COMPARE_FAILED);
	CHECK(into[0] == 0 && *v == 9);
	CHECK_EQ(cpulocal_domain_cbne_memcpy_store(d, here, v, 9, NULL, item, 16, 10, 0), -EINVAL);
	CHECK_EQ(cpulocal_domain_cbne_memcpy_store(d, here, v, 9, into, NULL, 16, 10, 0), -EINVAL);

	/* cbne_load_cbne_store */
	CHECK_EQ(cpulocal_domain_cbne_load_cbne_store(d, here, v, 9, v2, 70, 11, 0), 0);
	CHECK_EQ(*v, 11);
	CHECK_EQ(cpulocal_domain_cbne_load_cbne_store(d, here, v, 11, v2, 69, 12, 0),
		 CPULOCAL_COMPARE_FAILED);
	CHECK_EQ(*v, 11);
	CHECK_EQ(cpulocal_domain_cbne_load_cbne_store(d, here, v, 11, NULL, 69, 12, 0), -EINVAL);

	/* add_load_add_store: through a pointer to w[5]. */
	uintptr_t *ptr = &slots[here].w[4];
	*ptr = (uintptr_t)&slots[here].w[5];
	CHECK_EQ(cpulocal_domain_add_load_add_store(d, here, ptr, 0, 6, 0), 0);
	CHECK_EQ(slots[here].w[5], 6);
	CHECK_EQ(cpulocal_domain_add_load_add_store(d, here, NULL, 0, 6, 0), -EINVAL);
	CHECK_EQ(cpulocal_domain_add_load_add_store(d, ncpus, ptr, 0, 6, 0), -ERANGE);

	cpulocal_stats s;
	CHECK_EQ(cpulocal_domain_stats(d, &s), 0);
	if (ncpus > 1)
		CHECK(s.fenced >= 1);
	CHECK_EQ(cpulocal_domain_stats(NULL, &s), -EINVAL);
	CHECK_EQ(cpulocal_domain_cpus(NULL), 0);
	CHECK_EQ(cpulocal_domain_index(NULL), -EINVAL);
	CHECK_EQ(cpulocal_domain_current(NULL), -EINVAL);

	/* Operation vectors on slot `here`: [version, total, bits, copy...]. */
	uint64_t *version = (uint64_t *)&slots[here].w[0];
	uint64_t *total = (uint64_t *)&slots[here].w[1];
	uint64_t *bits = (uint64_t *)&slots[here].w[2];
	*version = 0;
	*total = 0;
	*bits = 0xf0;
	uint64_t seen = 0;
	cpulocal_op bump[3] = {
		{.op = CPULOCAL_OP_COMPARE_EQ, .len = 8, .a = version, .b = &seen},
		{.op = CPULOCAL_OP_ADD, .len = 8, .a = total, .value = 5},
		{.op = CPULOCAL_OP_ADD_RELEASE, .len = 8, .a = version, .value = 1},
	};
	size_t at = 99;
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bump, 3, &at), 0);
	CHECK(*version == 1 && *total == 5);
	CHECK_EQ(at, 99);
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bump, 3, &at), CPULOCAL_COMPARE_FAILED);
	CHECK_EQ(at, 0);
	CHECK(*version == 1 && *total == 5);
	/* From here on another CPU's slot (the fenced path either way). */
	CHECK_EQ(cpulocal_domain_run_ops(d, other, NULL, 0, NULL), 0);

	uint64_t ones = UINT64_MAX, src8 = 0x1122334455667788ull, dst8 = 0;
	cpulocal_op each[] = {
		{.op = CPULOCAL_OP_OR, .len = 8, .a = bits, .value = 0x0f},
		{.op = CPULOCAL_OP_AND, .len = 8, .a = bits, .value = 0x3c},
		{.op = CPULOCAL_OP_XOR, .len = 8, .a = bits, .value = 0x01},
		{.op = CPULOCAL_OP_LSHIFT, .len = 8, .a = bits, .value = 4},
		{.op = CPULOCAL_OP_RSHIFT, .len = 8, .a = bits, .value = 2},
		{.op = CPULOCAL_OP_MB},
		{.op = CPULOCAL_OP_ADD, .len = 8, .a = total, .value = (uint64_t)-1},
		{.op = CPULOCAL_OP_COMPARE_NE, .len = 8, .a = total, .b = &ones},
		{.op = CPULOCAL_OP_MEMCPY, .len = 8, .a = &dst8, .b = &src8},
		{.op = CPULOCAL_OP_MEMCPY_RELEASE, .len = 0, .a = &dst8, .b = &src8},
	};
	CHECK_EQ(cpulocal_domain_run_ops(d, here, each, sizeof each / sizeof each[0], &at), 0);
	CHECK_EQ(*bits, ((((0xf0 | 0x0f) & 0x3c) ^ 0x01) << 4) >> 2);
	CHECK_EQ(*total, 4);
	CHECK_EQ(dst8, src8);

	/* Refusals write nothing: the add before the bad operation stays undone. */
	cpulocal_op bad[2] = {
		{.op = CPULOCAL_OP_ADD, .len = 8, .a = total, .value = 1},
		{.op = 99},
	};
	at = 99;
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bad, 2, &at), -EINVAL);
	CHECK_EQ(at, 1);
	bad[1] = (cpulocal_op){.op = CPULOCAL_OP_ADD, .len = 3, .a = total, .value = 1};
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bad, 2, &at), -EINVAL);
	bad[1] = (cpulocal_op){.op = CPULOCAL_OP_LSHIFT, .len = 8, .a = total, .value = 64};
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bad, 2, &at), -EINVAL);
	bad[1] = (cpulocal_op){.op = CPULOCAL_OP_ADD, .len = 8, .a = NULL, .value = 1};
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bad, 2, &at), -EINVAL);
	bad[1] = (cpulocal_op){.op = CPULOCAL_OP_MEMCPY, .len = CPULOCAL_OPV_MAX_LEN + 1,
			       .a = &dst8, .b = &src8};
	at = 99;
	CHECK_EQ(cpulocal_domain_run_ops(d, here, bad, 2, &at), -E2BIG);
	CHECK_EQ(at, 1);
	CHECK_EQ(*total, 4);
	cpulocal_op many[CPULOCAL_OPV_MAX_OPS + 1];
	for (unsigned i = 0; i <= CPULOCAL_OPV_MAX_OPS; i++)
		many[i] = (cpulocal_op){.op = CPULOCAL_OP_ADD, .len = 8, .a = total, .value = 1};
	CHECK_EQ(cpulocal_domain_run_ops(d, here, many, CPULOCAL_OPV_MAX_OPS + 1, NULL), -E2BIG);
	CHECK_EQ(*total, 4);
	CHECK_EQ(cpulocal_domain_run_ops(d, here, many, CPULOCAL_OPV_MAX_OPS, NULL), 0);
	CHECK_EQ(*total, 4 + CPULOCAL_OPV_MAX_OPS);
	CHECK_EQ(cpulocal_domain_run_ops(d, ncpus, many, 1, NULL), -ERANGE);
	CHECK_EQ(cpulocal_domain_run_ops(NULL, here, many, 1, NULL), -EINVAL);
	CHECK_EQ(cpulocal_domain_run_ops(d, here, NULL, 1, NULL), -EINVAL);

	cpulocal_domain_free(NULL);
	cpulocal_domain_free(d);
	free(slots);
}

struct object {
	int value;
	cpulocal_list_node link;
};

static void test_list(void)
{
	errno = 0;
	CHECK(cpulocal_list_new_with_index(9) == NULL);
	CHECK_EQ(errno, EINVAL);
	cpulocal_list *l = cpulocal_list_new();
	CHECK(l != NULL);
	CHECK_EQ(cpulocal_list_cpus(l), ncpus);
	CHECK_EQ(cpulocal_list_is_empty(l), 1);
	CHECK(cpulocal_list_pop(l) == NULL);

	struct object objs[4] = {{.value = 0}, {.value = 1}, {.value = 2}, {.value = 3}};
	for (int i = 0; i < 3; i++)
		CHECK_EQ(cpulocal_list_push(l, &objs[i].link), 0);
	CHECK_EQ(cpulocal_list_is_empty(l), 0);
	cpulocal_list_node *n = cpulocal_list_pop(l);
	CHECK(n != NULL && container_of(n, struct object, link)->value == 2); /* LIFO */
	CHECK_EQ(cpulocal_list_push(l, n), 0);

	/* Another CPU's list: not this CPU's pop, but its pop_on. */
	unsigned other = (here + 1) % ncpus;
	CHECK_EQ(cpulocal_list_push_on(l, other, &objs[3].link), 0);
	if (ncpus > 1) {
		cpulocal_list_node *got = NULL;
		CHECK_EQ(cpulocal_list_pop_on(l, other, &got), 0);
		CHECK(got == &objs[3].link);
		CHECK_EQ(cpulocal_list_pop_on(l, other, &got), 0);
		CHECK(got == NULL);
		CHECK_EQ(cpulocal_list_push_on(l, other, &objs[3].link), 0);
	}

	/* Bad arguments. */
	CHECK_EQ(cpulocal_list_push(l, NULL), -EINVAL);
	CHECK_EQ(cpulocal_list_push(NULL, &objs[0].link), -EINVAL);
	CHECK_EQ(cpulocal_list_push(l, (cpulocal_list_node *)((char *)&objs[0].link + 1)), -EINVAL);
	CHECK_EQ(cpulocal_list_push_on(l, ncpus, &objs[0].link), -ERANGE);
	cpulocal_list_node *out = (cpulocal_list_node *)1;
	CHECK_EQ(cpulocal_list_pop_on(l, ncpus, &out), -ERANGE);
	CHECK(out == (cpulocal_list_node *)1);
	CHECK_EQ(cpulocal_list_pop_on(l, here, NULL), -EINVAL);
	CHECK_EQ(cpulocal_list_pop_on(NULL, here, &out), -EINVAL);
	CHECK_EQ(cpulocal_list_drain_on(l, ncpus, &out), -ERANGE);
	CHECK_EQ(cpulocal_list_drain_on(l, here, NULL), -EINVAL);
	CHECK(cpulocal_list_pop(NULL) == NULL);
	CHECK(cpulocal_list_drain(NULL) == NULL);
	CHECK_EQ(cpulocal_list_is_empty(NULL), 1);
	CHECK_EQ(cpulocal_list_cpus(NULL), 0);

	/* Drain: every node once, in one chain. */
	int seen[4] = {0, 0, 0, 0}, count = 0;
	for (cpulocal_list_node *p = cpulocal_list_drain(l); p != NULL; p = p->next) {
		seen[container_of(p, struct object, link)->value]++;
		count++;
	}
	CHECK_EQ(count, 4);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(seen[i], 1);
	CHECK_EQ(cpulocal_list_is_empty(l), 1);
	CHECK_EQ(cpulocal_list_push(l, &objs[0].link), 0);
	CHECK_EQ(cpulocal_list_drain_on(l, here, &out), 0);
	CHECK(out == &objs[0].link && out->next == NULL);

	cpulocal_stats s;
	CHECK_EQ(cpulocal_list_stats(l, &s), 0);
	CHECK_EQ(cpulocal_list_stats(l, NULL), -EINVAL);
	cpulocal_list_free(NULL);
	cpulocal_list_free(l);
}

static int drained;
static void count_item(void *arg, void *item)
{
	(void)item;
	(*(int *)arg)++;
	drained++;
}

static void test_buffer(void)
{
	errno = 0;
	CHECK(cpulocal_buffer_new(0) == NULL);
	CHECK_EQ(errno, EINVAL);
	errno = 0;
	CHECK(cpulocal_buffer_new_with_index(5, 4) == NULL);
	CHECK_EQ(errno, EINVAL);
	errno = 0;
	CHECK(cpulocal_buffer_new((size_t)1 << 60) == NULL);
	CHECK_EQ(errno, ENOMEM);

	cpulocal_buffer *b = cpulocal_buffer_new(2);
	CHECK(b != NULL);
	CHECK_EQ(cpulocal_buffer_capacity(b), 2);
	CHECK_EQ(cpulocal_buffer_cpus(b), ncpus);
	int x, y, z;
	CHECK_EQ(cpulocal_buffer_push(b, &x), 0);
	CHECK_EQ(cpulocal_buffer_push(b, &y), 0);
	CHECK_EQ(cpulocal_buffer_push(b, &z), -ENOSPC);
	CHECK_EQ(cpulocal_buffer_len(b), 2);
	CHECK(cpulocal_buffer_pop(b) == &y);
	CHECK_EQ(cpulocal_buffer_push(b, &z), 0);

	unsigned other = (here + 1) % ncpus;
	if (ncpus > 1) {
		CHECK_EQ(cpulocal_buffer_push_on(b, other, &x), 0);
		void *got = NULL;
		CHECK_EQ(cpulocal_buffer_pop_on(b, other, &got), 0);
		CHECK(got == &x);
		CHECK_EQ(cpulocal_buffer_pop_on(b, other, &got), 0);
		CHECK(got == NULL);
	}
	CHECK_EQ(cpulocal_buffer_push_on(b, here, &x), -ENOSPC);

	CHECK_EQ(cpulocal_buffer_push(b, NULL), -EINVAL);
	CHECK_EQ(cpulocal_buffer_push(NULL, &x), -EINVAL);
	CHECK_EQ(cpulocal_buffer_push_on(b, ncpus, &x), -ERANGE);
	CHECK_EQ(cpulocal_buffer_push_on(b, here, NULL), -EINVAL);
	void *out = &x;
	CHECK_EQ(cpulocal_buffer_pop_on(b, ncpus, &out), -ERANGE);
	CHECK(out == &x);
	CHECK_EQ(cpulocal_buffer_pop_on(b, here, NULL), -EINVAL);
	CHECK(cpulocal_buffer_pop(NULL) == NULL);
	CHECK_EQ(cpulocal_buffer_len(NULL), 0);
	CHECK_EQ(cpulocal_buffer_capacity(NULL), 0);
	CHECK_EQ(cpulocal_buffer_cpus(NULL), 0);
	CHECK_EQ(cpulocal_buffer_drain(b, NULL, NULL), -EINVAL);
	CHECK_EQ(cpulocal_buffer_drain(NULL, count_item, NULL), -EINVAL);

	int mine = 0;
	CHECK_EQ(cpulocal_buffer_drain(b, count_item, &mine), 2);
	CHECK_EQ(mine, 2);
	CHECK_EQ(cpulocal_buffer_len(b), 0);
	cpulocal_stats s;
	CHECK_EQ(cpulocal_buffer_stats(b, &s), 0);
	CHECK_EQ(cpulocal_buffer_stats(NULL, &s), -EINVAL);
	cpulocal_buffer_free(NULL);
	cpulocal_buffer_free(b);
}

struct try_on {
	cpulocal_lock *lock;
	unsigned cpu;
	int result;
};

static void *try_from_another_thread(void *arg)
{
	struct try_on *t = arg;
	cpulocal_lock_guard g;
	t->result = cpulocal_lock_try_acquire_on(t->lock, t->cpu, &g);
	if (t->result == 0)
		cpulocal_lock_release(&g);
	return NULL;
}

static void test_lock(void)
{
	errno = 0;
	CHECK(cpulocal_lock_new_with_index(3, 8) == NULL);
	CHECK_EQ(errno, EINVAL);
	cpulocal_lock *l = cpulocal_lock_new(sizeof(long));
	CHECK(l != NULL);
	CHECK_EQ(cpulocal_lock_cpus(l), ncpus);

	cpulocal_lock_guard g, g2;
	CHECK_EQ(cpulocal_lock_acquire(l, &g), 0);
	CHECK(g.data != NULL);
	CHECK_EQ(g.cpu, here);
	CHECK_EQ((uintptr_t)g.data % CPULOCAL_LOCK_DATA_ALIGN, 0);
	CHECK_EQ(*(long *)g.data, 0); /* zeroed */
	*(long *)g.data += 41;
	/* The same slot again, by the holder: refused, not a deadlock. */
	CHECK_EQ(cpulocal_lock_try_acquire(l, &g2), -EDEADLK);
	CHECK_EQ(cpulocal_lock_acquire(l, &g2), -EDEADLK);
	CHECK_EQ(cpulocal_lock_acquire_on(l, here, &g2), -EDEADLK);
	/* By another thread, without waiting: would block. */
	struct try_on t = {.lock = l, .cpu = here, .result = 1};
	pthread_t th;
	CHECK(pthread_create(&th, NULL, try_from_another_thread, &t) == 0);
	pthread_join(th, NULL);
	CHECK_EQ(t.result, -EAGAIN);
	CHECK_EQ(cpulocal_lock_release(&g), 0);
	CHECK(g.data == NULL);
	CHECK_EQ(cpulocal_lock_release(&g), -EINVAL); /* holds nothing now */
	t.result = 1;
	CHECK(pthread_create(&th, NULL, try_from_another_thread, &t) == 0);
	pthread_join(th, NULL);
	CHECK_EQ(t.result, 0);

	CHECK_EQ(cpulocal_lock_acquire_on(l, here, &g), 0);
	CHECK_EQ(*(long *)g.data, 41);
	*(long *)g.data += 1;
	CHECK_EQ(cpulocal_lock_release(&g), 0);
	CHECK_EQ(cpulocal_lock_try_acquire_on(l, here, &g), 0);
	CHECK_EQ(*(long *)g.data, 42);
	CHECK_EQ(cpulocal_lock_release(&g), 0);
	CHECK_EQ(cpulocal_lock_try_acquire(l, &g), 0);
	CHECK_EQ(cpulocal_lock_release(&g), 0);

	CHECK_EQ(cpulocal_lock_acquire_on(l, ncpus, &g), -ERANGE);
	CHECK_EQ(cpulocal_lock_try_acquire_on(l, ncpus, &g), -ERANGE);
	CHECK_EQ(cpulocal_lock_acquire(NULL, &g), -EINVAL);
	CHECK_EQ(cpulocal_lock_acquire(l, NULL), -EINVAL);
	CHECK_EQ(cpulocal_lock_try_acquire(NULL, &g), -EINVAL);
	CHECK_EQ(cpulocal_lock_release(NULL), -EINVAL);
	CHECK_EQ(cpulocal_lock_cpus(NULL), 0);
	cpulocal_stats s;
	CHECK_EQ(cpulocal_lock_stats(l, &s), 0);
	CHECK_EQ(cpulocal_lock_stats(l, NULL), -EINVAL);
	cpulocal_lock_free(NULL);
	cpulocal_lock_free(l);

	/* A pure lock: 0 bytes of data. */
	l = cpulocal_lock_new(0);
	CHECK(l != NULL);
	CHECK_EQ(cpulocal_lock_acquire(l, &g), 0);
	CHECK_EQ(cpulocal_lock_release(&g), 0);
	cpulocal_lock_free(l);
}

struct seen_records {
	int count;
	char text[8][16];
	unsigned cpu[8];
};

static void collect(void *arg, unsigned cpu, uint64_t offset, const void *payload, size_t len)
{
	struct seen_records *s = arg;
	(void)offset;
	if (s->count < 8 && len < 16) {
		memcpy(s->text[s->count], payload, len);
		s->text[s->count][len] = 0;
		s->cpu[s->count] = cpu;
	}
	s->count++;
}

static void test_ring(void)
{
	cpulocal_ring *r = cpulocal_ring_new(NULL);
	CHECK(r != NULL);
	CHECK_EQ(cpulocal_ring_bytes_per_cpu(r), 8 * 4096);
	CHECK_EQ(cpulocal_ring_max_record_len(r), 4088);
	CHECK_EQ(cpulocal_ring_cpus(r), ncpus);

	cpulocal_ring_reservation res;
	CHECK_EQ(cpulocal_ring_reserve(r, 0, &res), -EINVAL);
	CHECK_EQ(cpulocal_ring_reserve(r, 4089, &res), -EMSGSIZE);
	CHECK_EQ(cpulocal_ring_reserve(NULL, 5, &res), -EINVAL);
	CHECK_EQ(cpulocal_ring_reserve(r, 5, NULL), -EINVAL);
	CHECK_EQ(cpulocal_ring_reserve(r, 5, &res), 0);
	CHECK(res.data != NULL && res.len == 5 && res.cpu == here && res.offset % 8 == 0);
	memcpy(res.data, "hello", 5);
	CHECK_EQ(cpulocal_ring_commit(&res), 0);
	CHECK(res.data == NULL);
	CHECK_EQ(cpulocal_ring_commit(&res), -EINVAL);
	CHECK_EQ(cpulocal_ring_discard(&res), -EINVAL);
	CHECK_EQ(cpulocal_ring_commit(NULL), -EINVAL);
	CHECK_EQ(cpulocal_ring_write(r, "abc", 3), 0);
	CHECK_EQ(cpulocal_ring_write(r, NULL, 3), -EINVAL);
	CHECK_EQ(cpulocal_ring_write(r, "abc", 0), -EINVAL);
	CHECK_EQ(cpulocal_ring_write(r, "abc", 5000), -EMSGSIZE);
	CHECK_EQ(cpulocal_ring_write(NULL, "abc", 3), -EINVAL);
	CHECK_EQ(cpulocal_ring_reserve(r, 7, &res), 0);
	CHECK_EQ(cpulocal_ring_discard(&res), 0); /* padding, counted lost */

	struct seen_records seen = {0};
	cpulocal_ring_summary sum;
	CHECK_EQ(cpulocal_ring_consume(r, collect, &seen, &sum), 0);
	CHECK_EQ(seen.count, 0); /* the sub-buffer is not closed yet */
	cpulocal_ring_flush(r);
	cpulocal_ring_flush(NULL);
	CHECK_EQ(cpulocal_ring_consume(r, collect, &seen, &sum), 0);
	CHECK_EQ(seen.count, 2);
	CHECK_EQ(sum.records, 2);
	CHECK_EQ(sum.stuck, 0);
	CHECK_EQ(sum.lost, 1);
	CHECK(strcmp(seen.text[0], "hello") == 0 && strcmp(seen.text[1], "abc") == 0);
	CHECK(seen.cpu[0] == here && seen.cpu[1] == here);
	CHECK_EQ(cpulocal_ring_consume(r, NULL, NULL, NULL), -EINVAL);
	CHECK_EQ(cpulocal_ring_consume(NULL, collect, &seen, NULL), -EINVAL);
	CHECK_EQ(cpulocal_ring_lost(r), 1);
	uint64_t lost = 9, over = 9;
	CHECK_EQ(cpulocal_ring_counts_on(r, here, &lost, &over), 0);
	CHECK(lost == 1 && over == 0);
	CHECK_EQ(cpulocal_ring_counts_on(r, here, NULL, NULL), 0);
	CHECK_EQ(cpulocal_ring_counts_on(r, ncpus, &lost, &over), -ERANGE);
	CHECK_EQ(cpulocal_ring_counts_on(NULL, here, &lost, &over), -EINVAL);
	CHECK_EQ(cpulocal_ring_lost(NULL), 0);
	CHECK_EQ(cpulocal_ring_overwritten(NULL), 0);
	CHECK_EQ(cpulocal_ring_max_record_len(NULL), 0);
	cpulocal_stats s;
	CHECK_EQ(cpulocal_ring_stats(r, &s), 0);
	CHECK_EQ(cpulocal_ring_stats(NULL, &s), -EINVAL);
	cpulocal_ring_free(NULL);
	cpulocal_ring_free(r);

	/* Bad configurations. */
	cpulocal_ring_config bad = {.mode = 7};
	errno = 0;
	CHECK(cpulocal_ring_new(&bad) == NULL);
	CHECK_EQ(errno, EINVAL);
	bad = (cpulocal_ring_config){.sub_buffer_size = 1000};
	errno = 0;
	CHECK(cpulocal_ring_new(&bad) == NULL);
	CHECK_EQ(errno, EINVAL);
	bad = (cpulocal_ring_config){.sub_buffers = 1};
	CHECK(cpulocal_ring_new(&bad) == NULL);
	bad = (cpulocal_ring_config){.index = 3};
	CHECK(cpulocal_ring_new(&bad) == NULL);

	/* Discard mode, full: every refusal counted. 2 sub-buffers of 64 B hold
	 * 8 records of 8 payload bytes (16 B each). */
	cpulocal_ring_config small = {.sub_buffer_size = 64, .sub_buffers = 2};
	r = cpulocal_ring_new(&small);
	CHECK(r != NULL);
	CHECK_EQ(cpulocal_ring_max_record_len(r), 56);
	int refused = 0;
	for (int i = 0; i < 20; i++) {
		int e = cpulocal_ring_write(r, "12345678", 8);
		CHECK(e == 0 || e == -ENOSPC);
		refused += e == -ENOSPC;
	}
	CHECK_EQ(refused, 12);
	CHECK_EQ(cpulocal_ring_lost(r), 12);
	seen.count = 0;
	CHECK_EQ(cpulocal_ring_consume(r, collect, &seen, &sum), 0);
	CHECK_EQ(seen.count, 8);
	cpulocal_ring_free(r);

	/* Overwrite mode: never refused for room; the oldest are overwritten. */
	small.mode = CPULOCAL_RING_OVERWRITE;
	r = cpulocal_ring_new(&small);
	CHECK(r != NULL);
	for (int i = 0; i < 20; i++)
		CHECK_EQ(cpulocal_ring_write(r, "12345678", 8), 0);
	CHECK_EQ(cpulocal_ring_overwritten(r), 12);
	CHECK_EQ(cpulocal_ring_lost(r), 0);
	cpulocal_ring_free(r);
}

int main(void)
{
	pin_to_first_allowed_cpu();
	test_general();
	test_counter();
	test_domain();
	test_list();
	test_buffer();
	test_lock();
	test_ring();
	return check_summary("api");
}
