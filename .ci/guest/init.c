/*
 * /init of cpulocal's test guests: a static PID 1 with no shell and no libc
 * around it (the initramfs holds only this, the test programs and a list).
 *
 * It mounts /proc (the test binaries re-run themselves through
 * /proc/self/exe), /sys, devtmpfs on /dev and a tmpfs on /tmp; then runs each
 * line of /guest/programs, one after another:
 *
 *     <name> <timeout-seconds> [KEY=VALUE...] <path> [args...]
 *
 * Each program gets the console as stdin, stdout and stderr, RUST_BACKTRACE=1,
 * a PATH and a HOME, the KEY=VALUE lines of /guest/env (if any), the
 * KEY=VALUE words of its own line (which replace those of the same name), and
 * its own process group, so that a timeout kills the program and everything it
 * started. Before and after each run a marker line
 * that the host parses:
 *
 *     @@guest-start <name>
 *     @@guest <name> exit=<code|signal N|timeout> secs=<s.s>
 *
 * At the start "@@guest-kernel <release> <machine> cpus=<n>", at the end
 * "@@guest-done", then the machine powers off. PID 1 must never exit (the
 * kernel would panic), so every error is reported and followed by power-off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIST "/guest/programs"
#define ENV_FILE "/guest/env"
#define MAX_ARGS 64
#define MAX_ENV 64

static char *envp[MAX_ENV + 1] = {
	"RUST_BACKTRACE=1",
	"PATH=/bin",
	"HOME=/tmp",
	"TMPDIR=/tmp",
	NULL,
};

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Not reached; if it were, exiting would panic, which also ends the VM. */
	for (;;)
		pause();
}

static void mount_or_say(const char *src, const char *dir, const char *type)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, 0, NULL) != 0 && errno != EBUSY)
		say("@@guest-init mount %s on %s: %s\n", type, dir, strerror(errno));
}

/* The console as fds 0-2: the kernel opens it only if the initramfs has a
 * /dev/console node, and this one has no device nodes (packing needs none). */
static void open_console(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return; /* nothing to say it with */
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* Appends the KEY=VALUE lines of ENV_FILE to envp. */
static void read_env(void)
{
	FILE *f = fopen(ENV_FILE, "r");
	if (!f)
		return;
	int n = 0;
	while (envp[n])
		n++;
	char line[1024];
	while (n < MAX_ENV && fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (strchr(line, '=') && line[0] != '#')
			envp[n++] = strdup(line);
	}
	envp[n] = NULL;
	fclose(f);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Reaps every finished child (orphaned grandchildren come to PID 1 too);
 * returns 1 and sets *status when `pid` was among them. */
static int reap(pid_t pid, int *status)
{
	int found = 0, st;
	pid_t p;
	while ((p = waitpid(-1, &st, WNOHANG)) > 0)
		if (p == pid) {
			*status = st;
			found = 1;
		}
	return found;
}

/* Runs argv (after its leading KEY=VALUE words, which extend the environment). */
static void run(char *name, int timeout, char **argv)
{
	char *env[MAX_ENV + MAX_ARGS + 1];
	int n = 0;
	for (; envp[n]; n++)
		env[n] = envp[n];
	for (; *argv && argv[0][0] != '/' && strchr(argv[0], '='); argv++) {
		/* The program's own value replaces a default of the same name. */
		size_t key = strchr(argv[0], '=') - argv[0] + 1;
		int i = 0;
		while (i < n && strncmp(env[i], argv[0], key) != 0)
			i++;
		env[i] = argv[0];
		if (i == n)
			n++;
	}
	env[n] = NULL;
	if (!*argv) {
		say("@@guest-init %s: no program\n", name);
		return;
	}

	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);

	say("@@guest-start %s\n", name);
	double start = now();
	pid_t pid = fork();
	if (pid < 0) {
		say("@@guest %s exit=fork-failed secs=0\n", name);
		return;
	}
	if (pid == 0) {
		setpgid(0, 0);
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		execve(argv[0], argv, env);
		printf("@@guest-init exec %s: %s\n", argv[0], strerror(errno));
		fflush(stdout);
		_exit(127);
	}
	setpgid(pid, pid); /* also here: no window where the child has init's group */

	int status = 0, done = 0;
	while (!done) {
		double left = start + timeout - now();
		if (left <= 0)
			break;
		struct timespec ts = { (time_t)left, (long)((left - (time_t)left) * 1e9) };
		sigtimedwait(&chld, NULL, &ts); /* a SIGCHLD or the deadline */
		done = reap(pid, &status);
	}
	double secs = now() - start;
	/* Whatever the program left running goes with it. */
	kill(-pid, SIGKILL);
	int ignored;
	if (!done) {
		waitpid(pid, &ignored, 0);
		reap(-1, &ignored);
		say("@@guest %s exit=timeout secs=%.1f\n", name, secs);
		return;
	}
	reap(-1, &ignored);
	if (WIFEXITED(status))
		say("@@guest %s exit=%d secs=%.1f\n", name, WEXITSTATUS(status), secs);
	else
		say("@@guest %s exit=signal %d secs=%.1f\n", name, WTERMSIG(status), secs);
}

int main(void)
{
	mount_or_say("devtmpfs", "/dev", "devtmpfs");
	open_console();
	mount_or_say("proc", "/proc", "proc");
	mount_or_say("sysfs", "/sys", "sysfs");
	mount_or_say("tmpfs", "/tmp", "tmpfs");

	/* SIGCHLD stays blocked in PID 1 and is taken with sigtimedwait. */
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);

	read_env();

	struct utsname u;
	uname(&u);
	say("@@guest-kernel %s %s cpus=%ld\n", u.release, u.machine, sysconf(_SC_NPROCESSORS_ONLN));

	FILE *list = fopen(LIST, "r");
	if (!list) {
		say("@@guest-init %s: %s\n", LIST, strerror(errno));
		power_off();
	}
	char line[4096];
	while (fgets(line, sizeof line, list)) {
		char *argv[MAX_ARGS + 1];
		int argc = 0;
		for (char *tok = strtok(line, " \t\n"); tok && argc < MAX_ARGS; tok = strtok(NULL, " \t\n"))
			argv[argc++] = tok;
		argv[argc] = NULL;
		if (argc == 0 || argv[0][0] == '#')
			continue;
		if (argc < 3) {
			say("@@guest-init bad line in %s: %s\n", LIST, argv[0]);
			continue;
		}
		run(argv[0], atoi(argv[1]), argv + 2);
	}
	fclose(list);
	say("@@guest-done\n");
	power_off();
}
