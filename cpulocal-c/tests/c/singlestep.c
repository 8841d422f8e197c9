/*
 * singlestep.c - the child that tests/singlestep.rs single-steps with
 * PTRACE_SINGLESTEP.
 *
 *   singlestep counter   cpulocal_counter_add, add_on (this CPU and
 *                        another) and cpulocal_percpu_addv, each stepped
 *                        to completion
 *   singlestep bare      a hand-written rseq add retried until it commits
 *                        (c/rseq_add.h, x86_64): never completes stepped
 *
 * The child pins itself to one CPU, warms up, prints its thread id on
 * stderr ("CPULOCAL-SINGLESTEP-TID <tid>"), asks to be traced
 * (PTRACE_TRACEME) and stops itself with SIGSTOP: the parent steps from
 * there. After each operation it raises SIGUSR1 ("operation done"), at the
 * end SIGUSR2 ("stop stepping"). Once the parent has detached, the counter
 * child checks the sums and the paths (every stepped operation fenced, each
 * local one after exactly CPULOCAL_RSEQ_ATTEMPTS aborted sections on the
 * rseq engine) and exits 0 if they hold.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpulocal.h"
#include "check.h"

#ifdef __x86_64__
#include "../../c/rseq_add.h"
#endif

/* Empty segments first: what a marker alone costs in steps. */
#define BASELINE 4

static pid_t pid, tid;

/* One tgkill: a marker costs the stepped thread a few instructions. */
static void __attribute__((noinline)) mark(int sig)
{
	syscall(SYS_tgkill, pid, tid, sig);
}

static unsigned pin_to_first_allowed_cpu(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) != 0)
		abort();
	unsigned cpu = 0;
	while (!CPU_ISSET(cpu, &set))
		cpu++;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		abort();
	sched_yield();
	return cpu;
}

static void become_tracee(void)
{
	pid = getpid();
	tid = (pid_t)syscall(SYS_gettid);
	fprintf(stderr, "CPULOCAL-SINGLESTEP-TID %d\n", (int)tid);
	fflush(stderr);
	if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0) {
		perror("PTRACE_TRACEME");
		exit(2);
	}
	mark(SIGSTOP); /* stepping starts when this returns */
}

struct slot {
	uintptr_t word;
} __attribute__((aligned(128)));

static int child_counter(void)
{
	unsigned here = pin_to_first_allowed_cpu();
	unsigned ncpus = cpulocal_possible_cpus();
	unsigned other = (here + 1) % ncpus;
	cpulocal_counter *c = cpulocal_counter_new();
	cpulocal_domain *d = cpulocal_domain_new(CPULOCAL_INDEX_CPU);
	struct slot *slots = aligned_alloc(128, ncpus * sizeof *slots);
	if (c == NULL || d == NULL || slots == NULL)
		return 2;
	memset(slots, 0, ncpus * sizeof *slots);
	/* Warm up: the thread's set-up, every slot's first fence. */
	for (int i = 0; i < 1000; i++)
		cpulocal_counter_add(c, 1);
	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		cpulocal_counter_add_on(c, cpu, 1);
	cpulocal_percpu_addv(d, &slots[0].word, sizeof *slots, 1);
	CHECK_EQ(cpulocal_counter_take(c), 1000 + ncpus);
	slots[here].word = 0;
	int rseq = strcmp(cpulocal_engine(), "rseq") == 0;
	cpulocal_stats c0, d0, c1, d1;
	cpulocal_counter_stats(c, &c0);
	cpulocal_domain_stats(d, &d0);

	/* The plan: 4 empty segments, then 24 add, 12 add_on here, 12 add_on
	 * another CPU, 8 percpu_addv. */
	int64_t want_here = 0, want_other = 0;
	int n_local = 0, n_remote = 0, n_addv = 0;
	become_tracee();
	for (int i = 0; i < BASELINE; i++)
		mark(SIGUSR1);
	for (int64_t i = 0; i < 48; i++) {
		int64_t n = (i * 37 % 101) - 40;
		switch (i % 4) {
		case 0:
		case 2:
			cpulocal_counter_add(c, n);
			want_here += n;
			n_local++;
			break;
		case 1:
			CHECK_EQ(cpulocal_counter_add_on(c, here, n), 0);
			want_here += n;
			n_local++;
			break;
		default:
			CHECK_EQ(cpulocal_counter_add_on(c, other, n), 0);
			if (other == here) {
				want_here += n;
				n_local++;
			} else {
				want_other += n;
				n_remote++;
			}
		}
		mark(SIGUSR1);
	}
	for (int i = 0; i < 8; i++) {
		CHECK_EQ(cpulocal_percpu_addv(d, &slots[0].word, sizeof *slots, 3), 0);
		n_addv++;
		mark(SIGUSR1);
	}
	mark(SIGUSR2); /* stepping ends here */

	cpulocal_counter_stats(c, &c1);
	cpulocal_domain_stats(d, &d1);
	int64_t per_cpu[1024];
	cpulocal_counter_per_cpu(c, per_cpu, 1024);
	fprintf(stderr,
		"child: engine %s, %u CPUs, pinned to %u; counter: retried %llu, aborts %llu, "
		"fenced %llu; percpu_addv: retried %llu, aborts %llu, fenced %llu\n",
		cpulocal_engine(), ncpus, here, (unsigned long long)(c1.retried - c0.retried),
		(unsigned long long)(c1.aborts - c0.aborts),
		(unsigned long long)(c1.fenced - c0.fenced),
		(unsigned long long)(d1.retried - d0.retried),
		(unsigned long long)(d1.aborts - d0.aborts),
		(unsigned long long)(d1.fenced - d0.fenced));

	/* Every stepped operation completed, exactly once, on its slot. */
	CHECK_EQ(cpulocal_counter_sum(c), want_here + want_other);
	CHECK_EQ(per_cpu[here], want_here);
	if (other != here)
		CHECK_EQ(per_cpu[other], want_other);
	CHECK_EQ(slots[here].word, 3 * n_addv);
	/* ... and each by the fenced path: no section commits when a trap
	 * follows each of its instructions. */
	CHECK_EQ(c1.fenced - c0.fenced, n_local + n_remote);
	CHECK_EQ(c1.retried - c0.retried, 0);
	CHECK_EQ(d1.fenced - d0.fenced, n_addv);
	CHECK_EQ(d1.retried - d0.retried, 0);
	/* On the rseq engine each local one after exactly RSEQ_ATTEMPTS aborts
	 * (a remote one runs no section); without rseq, none runs. */
	unsigned attempts = rseq ? CPULOCAL_RSEQ_ATTEMPTS : 0;
	CHECK_EQ(c1.aborts - c0.aborts, (uint64_t)attempts * n_local);
	CHECK_EQ(d1.aborts - d0.aborts, (uint64_t)attempts * n_addv);
	cpulocal_domain_free(d);
	cpulocal_counter_free(c);
	free(slots);
	return check_summary("singlestep child");
}

#ifdef __x86_64__
static int child_bare(void)
{
	pin_to_first_allowed_cpu();
	struct rseq_add_area *rs = rseq_add_area();
	if (rs == NULL) {
		/* Nothing to contrast with: the parent skips the test. */
		fprintf(stderr, "CPULOCAL-SINGLESTEP-NO-RSEQ glibc did not register rseq\n");
		return 0;
	}
	unsigned ncpus = cpulocal_possible_cpus();
	int64_t *slots = calloc(ncpus, sizeof *slots);
	if (slots == NULL)
		return 2;
	uint64_t free_attempts = 0;
	for (int i = 0; i < 10000; i++)
		free_attempts += rseq_add_retry(rs, slots, 1, 1);
	become_tracee();
	uint64_t attempts = rseq_add_retry(rs, slots, 1, 1);
	mark(SIGUSR2);
	int64_t sum = 0;
	for (unsigned i = 0; i < ncpus; i++)
		sum += slots[i];
	fprintf(stderr, "CPULOCAL-SINGLESTEP-BARE attempts=%llu free_attempts=%llu\n",
		(unsigned long long)attempts, (unsigned long long)free_attempts);
	CHECK_EQ(sum, 10001);
	CHECK(attempts > 1000); /* aborted again and again while stepped */
	free(slots);
	return check_summary("singlestep bare child");
}
#endif

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "counter") == 0)
		return child_counter();
#ifdef __x86_64__
	if (argc == 2 && strcmp(argv[1], "bare") == 0)
		return child_bare();
#endif
	fprintf(stderr, "usage: singlestep counter|bare\n");
	return 2;
}
