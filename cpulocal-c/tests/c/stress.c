/*
 * stress.c - the C API under load, with exact invariants.
 *
 *   stress THREADS OPS
 *
 * THREADS workers each run OPS passes. A pass adds 1 to one counter
 * (cpulocal_counter_add, or one in 16 cpulocal_counter_add_on to a random
 * CPU), and every 16th pass also moves a node of a list, a pointer of a
 * buffer, an increment under a lock and a record of a ring. Meanwhile:
 *   - every 512 passes a worker moves itself to a random allowed CPU
 *     (sched_setaffinity);
 *   - a signal thread sends SIGUSR1 to random workers; the handler adds 1 to
 *     the counter (cpulocal_counter_add is async-signal-safe) and counts it;
 *   - a taker thread empties the counter with cpulocal_counter_take in a
 *     loop, and a consumer thread drains the ring.
 * At the end:
 *   counter: taken + left == workers' adds + handlers' adds, exactly;
 *   list:    every node in the list once, none lost or twice;
 *   buffer:  every pointer in the buffer once;
 *   lock:    the slots' totals == the increments made under the lock;
 *   ring:    delivered == written, lost == refused, each producer's records
 *            in order on each CPU.
 * Exits 0 when every invariant holds, 1 (naming the broken one) otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cpulocal.h"

#define container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))

#define NODES_PER_THREAD 4
#define ITEMS_PER_THREAD 4
#define BUFFER_CAPACITY 64

struct node {
	unsigned id;
	cpulocal_list_node link;
};

struct record {
	uint32_t thread;
	uint32_t seq;
	uint64_t check;
};

static cpulocal_counter *counter;
static cpulocal_list *list;
static cpulocal_buffer *buffer;
static cpulocal_lock *lock;
static cpulocal_ring *ring;
static unsigned ncpus, nthreads;
static long ops;
static cpu_set_t allowed;
static atomic_long handler_adds;
static atomic_int started, finished, done;

struct worker {
	pthread_t thread;
	unsigned index;
	long adds;      /* counter adds made by the worker itself */
	long lock_incs; /* increments made under the lock */
	long written;   /* ring records accepted */
	long refused;   /* ring records refused as full */
	int failed;
} *workers;

static int fail(const char *what)
{
	fprintf(stderr, "stress: %s\n", what);
	return 1;
}

static uint64_t next_random(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void on_signal(int sig)
{
	(void)sig;
	int saved = errno;
	cpulocal_counter_add(counter, 1);
	atomic_fetch_add_explicit(&handler_adds, 1, memory_order_relaxed);
	errno = saved;
}

static void move_to_random_cpu(uint64_t *rng)
{
	unsigned n = (unsigned)CPU_COUNT(&allowed), pick = next_random(rng) % n;
	for (unsigned cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (CPU_ISSET(cpu, &allowed) && pick-- == 0) {
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(cpu, &one);
			sched_setaffinity(0, sizeof one, &one);
			return;
		}
	}
}

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (w->index + 1);
	uint32_t seq = 0;
	/* The first cpulocal call of the thread, before any handler runs. */
	cpulocal_current_cpu();
	atomic_fetch_add(&started, 1);
	for (long i = 0; i < ops; i++) {
		uint64_t r = next_random(&rng);
		if (r % 16 == 0) {
			if (cpulocal_counter_add_on(counter, (unsigned)(r >> 8) % ncpus, 1) != 0)
				w->failed = 1;
		} else {
			cpulocal_counter_add(counter, 1);
		}
		w->adds++;
		if (i % 512 == 0)
			move_to_random_cpu(&rng);
		if (i % 16 != 0)
			continue;

		/* A node out of the list and back, maybe on another CPU. */
		cpulocal_list_node *n = cpulocal_list_pop(list);
		for (unsigned c = 0; n == NULL && c < ncpus; c++)
			if (cpulocal_list_pop_on(list, c, &n) != 0)
				w->failed = 1;
		if (n != NULL) {
			int e = r % 4 == 0 ? cpulocal_list_push_on(list, (unsigned)(r >> 16) % ncpus, n)
					   : cpulocal_list_push(list, n);
			if (e != 0)
				w->failed = 1;
		}

		/* A pointer out of the buffer and back. */
		void *item = cpulocal_buffer_pop(buffer);
		for (unsigned c = 0; item == NULL && c < ncpus; c++)
			if (cpulocal_buffer_pop_on(buffer, c, &item) != 0)
				w->failed = 1;
		if (item != NULL && cpulocal_buffer_push(buffer, item) == -ENOSPC) {
			unsigned c = 0;
			while (cpulocal_buffer_push_on(buffer, c, item) == -ENOSPC)
				c = (c + 1) % ncpus;
		}

		/* An increment under the lock: this CPU's slot or another's. */
		cpulocal_lock_guard g;
		int e = r % 8 == 0 ? cpulocal_lock_acquire_on(lock, (unsigned)(r >> 24) % ncpus, &g)
				   : cpulocal_lock_acquire(lock, &g);
		if (e == 0) {
			(*(long *)g.data)++;
			w->lock_incs++;
			cpulocal_lock_release(&g);
		} else {
			w->failed = 1;
		}

		/* A record: reserve, fill, commit. */
		cpulocal_ring_reservation res;
		e = cpulocal_ring_reserve(ring, sizeof(struct record), &res);
		if (e == 0) {
			struct record rec = {w->index, seq, (uint64_t)w->index * 1000003u + seq};
			memcpy(res.data, &rec, sizeof rec);
			cpulocal_ring_commit(&res);
			w->written++;
			seq++;
		} else if (e == -ENOSPC) {
			w->refused++;
		} else {
			w->failed = 1;
		}
	}
	/* Stay (yielding, so signals can land) until some handler has run: a
	 * short run, or valgrind's one-thread-at-a-time scheduling, could
	 * otherwise end before the signal thread is first scheduled. Bounded:
	 * after 30 s the final check reports that no handler ran. */
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (atomic_load(&handler_adds) == 0) {
		sched_yield();
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec > 30)
			break;
	}
	atomic_fetch_add(&finished, 1);
	return NULL;
}

static void *signal_thread(void *arg)
{
	(void)arg;
	uint64_t rng = 12345;
	struct timespec pause = {0, 20000};
	while (!atomic_load(&done)) {
		pthread_kill(workers[next_random(&rng) % nthreads].thread, SIGUSR1);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

static atomic_long taken;

static void *taker(void *arg)
{
	(void)arg;
	while (!atomic_load(&done))
		atomic_fetch_add(&taken, cpulocal_counter_take(counter));
	return NULL;
}

/* The consumer's view: per producer and CPU, the last sequence number. */
static long delivered, out_of_order, corrupt;
static int64_t *last_seq;

static void on_record(void *arg, unsigned cpu, uint64_t offset, const void *payload, size_t len)
{
	(void)arg;
	(void)offset;
	struct record rec;
	if (len != sizeof rec || cpu >= ncpus) {
		corrupt++;
		return;
	}
	memcpy(&rec, payload, sizeof rec);
	if (rec.thread >= nthreads || rec.check != (uint64_t)rec.thread * 1000003u + rec.seq) {
		corrupt++;
		return;
	}
	int64_t *last = &last_seq[rec.thread * ncpus + cpu];
	if ((int64_t)rec.seq <= *last)
		out_of_order++;
	*last = rec.seq;
	delivered++;
}

static void *consumer(void *arg)
{
	(void)arg;
	struct timespec pause = {0, 200000};
	while (!atomic_load(&done)) {
		cpulocal_ring_consume(ring, on_record, NULL, NULL);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	ncpus = cpulocal_possible_cpus();
	nthreads = argc > 1 ? (unsigned)atoi(argv[1]) : 6 * ncpus;
	ops = argc > 2 ? atol(argv[2]) : 100000;
	if (nthreads == 0 || ops <= 0)
		return fail("usage: stress THREADS OPS");
	sched_getaffinity(0, sizeof allowed, &allowed);

	counter = cpulocal_counter_new();
	list = cpulocal_list_new();
	buffer = cpulocal_buffer_new(BUFFER_CAPACITY);
	lock = cpulocal_lock_new(sizeof(long));
	cpulocal_ring_config rc = {.sub_buffer_size = 1024, .sub_buffers = 4};
	ring = cpulocal_ring_new(&rc);
	workers = calloc(nthreads, sizeof *workers);
	last_seq = malloc(sizeof *last_seq * nthreads * ncpus);
	if (!counter || !list || !buffer || !lock || !ring || !workers || !last_seq)
		return fail("cannot allocate");
	for (unsigned i = 0; i < nthreads * ncpus; i++)
		last_seq[i] = -1;

	unsigned nnodes = NODES_PER_THREAD * nthreads;
	struct node *nodes = calloc(nnodes, sizeof *nodes);
	unsigned nitems = ITEMS_PER_THREAD * nthreads;
	if (nitems > BUFFER_CAPACITY * ncpus / 2)
		nitems = BUFFER_CAPACITY * ncpus / 2;
	unsigned *items = calloc(nitems, sizeof *items);
	if (!nodes || !items)
		return fail("cannot allocate");
	for (unsigned i = 0; i < nnodes; i++) {
		nodes[i].id = i;
		cpulocal_list_push_on(list, i % ncpus, &nodes[i].link);
	}
	for (unsigned i = 0; i < nitems; i++) {
		items[i] = i;
		cpulocal_buffer_push_on(buffer, i % ncpus, &items[i]);
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned i = 0; i < nthreads; i++) {
		workers[i].index = i;
		pthread_create(&workers[i].thread, NULL, work, &workers[i]);
	}
	while (atomic_load(&started) < (int)nthreads)
		sched_yield();
	pthread_t sig, take, consume;
	pthread_create(&sig, NULL, signal_thread, NULL);
	pthread_create(&take, NULL, taker, NULL);
	pthread_create(&consume, NULL, consumer, NULL);
	/* The signal thread may target any worker until `done`: join them only
	 * after it has stopped. */
	while (atomic_load(&finished) < (int)nthreads)
		usleep(1000);
	atomic_store(&done, 1);
	pthread_join(sig, NULL);
	pthread_join(take, NULL);
	pthread_join(consume, NULL);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(workers[i].thread, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);

	int bad = 0;
	long adds = 0, lock_incs = 0, written = 0, refused = 0;
	for (unsigned i = 0; i < nthreads; i++) {
		adds += workers[i].adds;
		lock_incs += workers[i].lock_incs;
		written += workers[i].written;
		refused += workers[i].refused;
		if (workers[i].failed)
			bad |= fail("a worker got an unexpected error code");
	}
	printf("engine: %s; %u threads x %ld passes on %u CPUs, %.2f s\n", cpulocal_engine(),
	       nthreads, ops, ncpus,
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);

	/* Counter */
	long h = atomic_load(&handler_adds), t = atomic_load(&taken);
	long left = (long)cpulocal_counter_sum(counter);
	cpulocal_stats s;
	cpulocal_counter_stats(counter, &s);
	printf("counter: added %ld (workers %ld, signal handlers %ld); taken %ld + left %ld = %ld: %s\n",
	       adds + h, adds, h, t, left, t + left, t + left == adds + h ? "exact" : "NOT EXACT");
	printf("counter paths: retried %llu, aborts %llu, fenced %llu\n",
	       (unsigned long long)s.retried, (unsigned long long)s.aborts,
	       (unsigned long long)s.fenced);
	if (t + left != adds + h)
		bad |= fail("counter: taken + left != added");
	if (h == 0)
		bad |= fail("counter: no signal handler ran");

	/* List */
	unsigned char *seen = calloc(nnodes, 1);
	unsigned count = 0, twice = 0;
	for (cpulocal_list_node *p = cpulocal_list_drain(list); p; p = p->next) {
		unsigned id = container_of(p, struct node, link)->id;
		twice += seen[id]++ != 0;
		count++;
	}
	printf("list: %u of %u nodes back, %u twice: %s\n", count, nnodes, twice,
	       count == nnodes && twice == 0 ? "conserved" : "NOT CONSERVED");
	if (count != nnodes || twice)
		bad |= fail("list: nodes not conserved");
	free(seen);

	/* Buffer */
	seen = calloc(nitems, 1);
	count = 0;
	twice = 0;
	void *item;
	for (unsigned c = 0; c < ncpus; c++) {
		while (cpulocal_buffer_pop_on(buffer, c, &item) == 0 && item != NULL) {
			unsigned id = *(unsigned *)item;
			twice += seen[id]++ != 0;
			count++;
		}
	}
	printf("buffer: %u of %u pointers back, %u twice: %s\n", count, nitems, twice,
	       count == nitems && twice == 0 ? "conserved" : "NOT CONSERVED");
	if (count != nitems || twice)
		bad |= fail("buffer: pointers not conserved");
	free(seen);

	/* Lock */
	long total = 0;
	for (unsigned c = 0; c < ncpus; c++) {
		cpulocal_lock_guard g;
		if (cpulocal_lock_acquire_on(lock, c, &g) != 0)
			return fail("lock: acquire_on failed");
		total += *(long *)g.data;
		cpulocal_lock_release(&g);
	}
	printf("lock: %ld increments, slots hold %ld: %s\n", lock_incs, total,
	       total == lock_incs ? "exact" : "NOT EXACT");
	if (total != lock_incs)
		bad |= fail("lock: increments lost");

	/* Ring */
	cpulocal_ring_flush(ring);
	cpulocal_ring_summary sum;
	do {
		cpulocal_ring_consume(ring, on_record, NULL, &sum);
	} while (sum.sub_buffers > 0);
	long lost = (long)cpulocal_ring_lost(ring);
	printf("ring: %ld written, %ld delivered; %ld refused, %ld lost; %ld out of order, %ld corrupt: %s\n",
	       written, delivered, refused, lost, out_of_order, corrupt,
	       delivered == written && lost == refused && !out_of_order && !corrupt ? "exact"
										  : "NOT EXACT");
	if (delivered != written || lost != refused || out_of_order || corrupt)
		bad |= fail("ring: records lost, duplicated, reordered or corrupt");

	cpulocal_ring_free(ring);
	cpulocal_lock_free(lock);
	cpulocal_buffer_free(buffer);
	cpulocal_list_free(list);
	cpulocal_counter_free(counter);
	free(items);
	free(nodes);
	free(last_seq);
	free(workers);
	return bad;
}
