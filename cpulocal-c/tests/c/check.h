/*
 * check.h - the C tests' checks: each CHECK counts, a failed one prints
 * where and what, and check_summary() prints the totals and gives the
 * program's exit status.
 */
#ifndef CPULOCAL_TEST_CHECK_H
#define CPULOCAL_TEST_CHECK_H

#include <stdio.h>

static int checks_run;
static int checks_failed;

#define CHECK(cond)                                                          \
	do {                                                                 \
		checks_run++;                                                \
		if (!(cond)) {                                               \
			checks_failed++;                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n",         \
				__FILE__, __LINE__, #cond);                  \
		}                                                            \
	} while (0)

/* CHECK that an int expression has the value `want`, printing both. */
#define CHECK_EQ(expr, want)                                                 \
	do {                                                                 \
		long long got_ = (long long)(expr);                          \
		long long want_ = (long long)(want);                         \
		checks_run++;                                                \
		if (got_ != want_) {                                         \
			checks_failed++;                                     \
			fprintf(stderr, "%s:%d: %s is %lld, want %s = %lld\n", \
				__FILE__, __LINE__, #expr, got_, #want,      \
				want_);                                      \
		}                                                            \
	} while (0)

static inline int check_summary(const char *name)
{
	printf("%s: %d checks, %d failed\n", name, checks_run, checks_failed);
	return checks_failed == 0 ? 0 : 1;
}

#endif
