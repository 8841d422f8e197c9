/* counter.c: eight threads count requests on one per-CPU counter while the
 * main thread empties it as they go; not one add is lost. */
#include <cpulocal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#define THREADS 8
#define REQUESTS 1000000

static cpulocal_counter *requests;
static atomic_int running = THREADS;

static void *worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < REQUESTS; i++)
		cpulocal_counter_add(requests, 1); /* this CPU's slot: one rseq section */
	atomic_fetch_sub(&running, 1);
	return NULL;
}

int main(void)
{
	requests = cpulocal_counter_new();
	if (requests == NULL) {
		perror("cpulocal_counter_new");
		return 1;
	}
	printf("engine: %s, %u possible CPUs\n", cpulocal_engine(), cpulocal_possible_cpus());

	pthread_t threads[THREADS];
	for (int i = 0; i < THREADS; i++)
		pthread_create(&threads[i], NULL, worker, NULL);
	int64_t taken = 0;
	while (atomic_load(&running) > 0)
		taken += cpulocal_counter_take(requests); /* reset without losing an add */
	for (int i = 0; i < THREADS; i++)
		pthread_join(threads[i], NULL);

	/* CPU 0's slot, from whichever CPU this runs on: the fenced path. */
	int err = cpulocal_counter_add_on(requests, 0, 5);
	if (err != 0)
		fprintf(stderr, "cpulocal_counter_add_on: error %d\n", err);
	int64_t total = taken + cpulocal_counter_sum(requests);
	int64_t expected = (int64_t)THREADS * REQUESTS + 5;
	printf("counted %lld of %lld: %s\n", (long long)total, (long long)expected,
	       total == expected ? "exact" : "LOST");
	cpulocal_counter_free(requests);
	return total == expected ? 0 : 1;
}
