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
 * At the start "@@guest-kernel <release> <machine> cpus=<n>", then
 * "@@guest-cpus possible=<list> online=<list>" and, on a kernel with NUMA,
 * "@@guest-nodes online=<list> node<N>=<its CPUs>...". At the end
 * "@@guest-done", then the machine powers off. PID 1 must never exit (the
 * kernel would panic), so every error is reported and followed by power-off.
 *
 * If /guest/hotplug exists ("<min-ms> <max-ms>"), a child started before the
 * first program takes CPUs 1 and up offline and online again through
 * /sys/devices/system/cpu/cpu<N>/online, one write every min-ms to max-ms, until
 * the last program is done; cpu0 is never touched, so one CPU always stays
 * online. Then "@@guest-hotplug toggles=<writes that succeeded>
 * failures=<writes that failed>": a refused write (EBUSY, ...) is counted,
 * not fatal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIST "/guest/programs"
#define ENV_FILE "/guest/env"
#define HOTPLUG_FILE "/guest/hotplug"
#define CPU_DIR "/sys/devices/system/cpu"
#define NODE_DIR "/sys/devices/system/node"
#define MAX_CPUS 64
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

/* The CPU-hotplug child while it runs (0 before it starts and once it is
 * reaped), its status once reaped, and the counts it shares with init. */
static pid_t hotplug_pid;
static int hotplug_status = -1;
struct hotplug_shared {
	volatile long toggles, failures;
	volatile int stop;
};
static struct hotplug_shared *hotplug;

/* Reaps every finished child (orphaned grandchildren come to PID 1 too);
 * returns 1 and sets *status when `pid` was among them. */
static int reap(pid_t pid, int *status)
{
	int found = 0, st;
	pid_t p;
	while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
		if (p == pid) {
			*status = st;
			found = 1;
		}
		if (hotplug_pid > 0 && p == hotplug_pid) {
			hotplug_status = st;
			hotplug_pid = 0;
		}
	}
	return found;
}

/* The first line of a sysfs file, without its newline, into buf ("?" if it
 * cannot be read). */
static char *read_line(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	if (!f || !fgets(buf, (int)size, f))
		snprintf(buf, size, "?");
	if (f)
		fclose(f);
	buf[strcspn(buf, "\n")] = 0;
	return buf;
}

/* The CPU lists, and the NUMA nodes with their CPUs (CPULOCAL_GUEST_NODES). */
static void print_topology(void)
{
	char a[256], b[256], path[128];
	say("@@guest-cpus possible=%s online=%s\n", read_line(CPU_DIR "/possible", a, sizeof a),
	    read_line(CPU_DIR "/online", b, sizeof b));
	if (access(NODE_DIR "/online", R_OK) != 0)
		return; /* a kernel without NUMA */
	char line[1024];
	int len = snprintf(line, sizeof line, "@@guest-nodes online=%s",
			   read_line(NODE_DIR "/online", a, sizeof a));
	for (int node = 0; node < MAX_CPUS && len < (int)sizeof line; node++) {
		snprintf(path, sizeof path, NODE_DIR "/node%d/cpulist", node);
		if (access(path, R_OK) == 0)
			len += snprintf(line + len, sizeof line - len, " node%d=%s", node,
					read_line(path, a, sizeof a));
	}
	say("%s\n", line);
}

/* A write of "0" or "1" to a CPU's online file; 0 or the errno. */
static int set_online(int cpu, int on)
{
	char path[128];
	snprintf(path, sizeof path, CPU_DIR "/cpu%d/online", cpu);
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return errno;
	int err = write(fd, on ? "1" : "0", 1) == 1 ? 0 : errno;
	close(fd);
	return err;
}

static int is_online(int cpu)
{
	char path[128], buf[8];
	snprintf(path, sizeof path, CPU_DIR "/cpu%d/online", cpu);
	return read_line(path, buf, sizeof buf)[0] == '1';
}

/* The hotplug child's loop: a random CPU of 1..n flips between online and
 * offline, then a random pause of min_ms to max_ms, until init sets stop.
 * Randomness, not a fixed cycle: a program then sees CPUs leave and come back
 * in every order, and any number of them offline at once. */
static void hotplug_loop(int min_ms, int max_ms)
{
	int cpus[MAX_CPUS], n = 0;
	char path[128];
	for (int cpu = 1; cpu < MAX_CPUS; cpu++) {
		snprintf(path, sizeof path, CPU_DIR "/cpu%d/online", cpu);
		if (access(path, W_OK) == 0)
			cpus[n++] = cpu;
	}
	if (n == 0) {
		say("@@guest-hotplug no CPU has a writable online file\n");
		_exit(1);
	}
	say("@@guest-hotplug cycling %d CPUs (cpu%d to cpu%d) every %d-%d ms\n", n, cpus[0],
	    cpus[n - 1], min_ms, max_ms);
	unsigned long x = (unsigned long)(now() * 1e9) | 1; /* xorshift state */
	while (!hotplug->stop) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		long ms = min_ms + (long)(x % (unsigned long)(max_ms - min_ms + 1));
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
		nanosleep(&ts, NULL);
		if (hotplug->stop)
			break;
		int cpu = cpus[(x >> 32) % (unsigned long)n];
		int on = !is_online(cpu);
		int err = set_online(cpu, on);
		if (err == 0) {
			hotplug->toggles++;
			continue;
		}
		/* The first few say what went wrong; the count says how often. */
		if (hotplug->failures++ < 5)
			say("@@guest-hotplug cpu%d %s: %s\n", cpu, on ? "online" : "offline",
			    strerror(err));
	}
	_exit(0);
}

/* Starts the hotplug child if HOTPLUG_FILE asks for it. */
static void start_hotplug(void)
{
	FILE *f = fopen(HOTPLUG_FILE, "r");
	if (!f)
		return;
	int min_ms = 50, max_ms = 200;
	if (fscanf(f, "%d %d", &min_ms, &max_ms) != 2 || min_ms < 1 || max_ms < min_ms) {
		say("@@guest-init %s: want \"<min-ms> <max-ms>\"; using 50 200\n", HOTPLUG_FILE);
		min_ms = 50;
		max_ms = 200;
	}
	fclose(f);
	hotplug = mmap(NULL, sizeof *hotplug, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		       -1, 0);
	if (hotplug == MAP_FAILED) {
		say("@@guest-hotplug mmap: %s\n", strerror(errno));
		hotplug = NULL;
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		say("@@guest-hotplug fork: %s\n", strerror(errno));
		return;
	}
	if (pid == 0)
		hotplug_loop(min_ms, max_ms);
	hotplug_pid = pid;
}

/* Stops the hotplug child (it finishes the write it is in) and reports its
 * counts. */
static void stop_hotplug(void)
{
	if (!hotplug)
		return;
	hotplug->stop = 1;
	/* A write to an online file waits for the CPU to come up or go down:
	 * under the emulator that can take a while. */
	double deadline = now() + 30;
	while (hotplug_pid > 0 && now() < deadline) {
		struct timespec ts = { 0, 20 * 1000000 };
		nanosleep(&ts, NULL);
		int ignored;
		reap(-1, &ignored);
	}
	if (hotplug_pid > 0) {
		say("@@guest-hotplug the child did not stop within 30 s: killed\n");
		kill(hotplug_pid, SIGKILL);
		waitpid(hotplug_pid, &hotplug_status, 0);
		hotplug_pid = 0;
	} else if (!(WIFEXITED(hotplug_status) && WEXITSTATUS(hotplug_status) == 0)) {
		say("@@guest-hotplug the child ended early (status %#x)\n", hotplug_status);
	}
	char buf[256];
	say("@@guest-hotplug toggles=%ld failures=%ld\n", hotplug->toggles, hotplug->failures);
	say("@@guest-cpus online=%s\n", read_line(CPU_DIR "/online", buf, sizeof buf));
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
	print_topology();

	FILE *list = fopen(LIST, "r");
	if (!list) {
		say("@@guest-init %s: %s\n", LIST, strerror(errno));
		power_off();
	}
	start_hotplug();
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
	stop_hotplug();
	say("@@guest-done\n");
	power_off();
}
