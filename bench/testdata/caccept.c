// caccept: the C baseline for BenchmarkAccept (inplace-c and handoff-c).
// What a careful C programmer writes for an in-place server and for an
// einhorn/socketmaster-style master that accepts and hands each connection
// to a worker. Like the Go servers of the benchmark, nobody reads or writes
// a connection: the server closes it, which the client sees as EOF.
//
//   caccept listen N   accept on the listening socket at fd 3 and close
//                      each connection (N is ignored)
//   caccept master N   accept on fd 3 and send each connection, alone, in
//                      one SCM_RIGHTS message to the next of the N workers
//                      at fds 4..3+N (round robin), then close it
//   caccept worker N   receive connections on the socket at fd 3 and close
//                      each (N is ignored)
//
// Control, as the Go accept-server role: it prints "ok" once set up,
// answers every line on stdin with "CPU HANDLED SENT" (CPU: user+system ns
// of getrusage(RUSAGE_SELF), all threads; HANDLED: connections accepted or
// received; SENT: messages sent, a master's) and exits 0 when stdin closes.
// A worker also exits 0 when its master's socket reaches EOF.
//
// Blocking: the accepting (or receiving) thread blocks in accept4(2) (or
// recvmsg(2)) on its one descriptor, as a C master of that style does. It
// has nothing else to wait for, so epoll would only add an epoll_wait per
// wake-up (and an accept4 that fails with EAGAIN each time the backlog
// drains); a blocked accept is woken exclusively by the kernel when a
// connection is queued, one syscall per connection. The control channel
// lives on a thread of its own so that it never sits on that path.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

// maxFDs is SCM_MAX_FD, the most descriptors one message carries; a C
// master sends one, but a worker takes what comes.
#define maxFDs 253

static unsigned long handled, sent;
static int nworkers;

static void die(const char *what) {
	perror(what);
	exit(1);
}

// blocking clears O_NONBLOCK: the descriptor arrives in whatever mode the
// Go parent left its file description.
static void blocking(int fd) {
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		die("fcntl");
}

// acceptOne returns the next connection on the listener at fd 3.
static int acceptOne(void) {
	for (;;) {
		// No address: nobody here would use it.
		int fd = accept4(3, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			return fd;
		// A connection reset while queued is the client's business.
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		die("accept4");
	}
}

static void *listenLoop(void *arg) {
	(void)arg;
	for (;;) {
		int fd = acceptOne();
		// Counted before the close that the client waits for, so a mark
		// taken after the clients finished sees every connection.
		__atomic_fetch_add(&handled, 1, __ATOMIC_SEQ_CST);
		close(fd);
	}
	return NULL;
}

static void *masterLoop(void *arg) {
	(void)arg;
	char byte = 1;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	for (int next = 0;; next = (next + 1) % nworkers) {
		int fd = acceptOne();
		struct iovec iov = {&byte, 1};
		struct msghdr msg = {0};
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = u.buf;
		msg.msg_controllen = sizeof(u.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
		// SOCK_SEQPACKET: the message goes whole or not at all; a full
		// queue blocks, which is the backpressure a slow worker exerts.
		while (sendmsg(4 + next, &msg, MSG_NOSIGNAL) < 0)
			if (errno != EINTR)
				die("sendmsg");
		__atomic_fetch_add(&handled, 1, __ATOMIC_SEQ_CST);
		__atomic_fetch_add(&sent, 1, __ATOMIC_SEQ_CST);
		// The worker has its own copy now.
		close(fd);
	}
	return NULL;
}

static void *workerLoop(void *arg) {
	(void)arg;
	char byte;
	union {
		char buf[CMSG_SPACE(sizeof(int) * maxFDs)];
		struct cmsghdr align;
	} u;
	for (;;) {
		struct iovec iov = {&byte, 1};
		struct msghdr msg = {0};
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = u.buf;
		msg.msg_controllen = sizeof(u.buf);
		ssize_t n = recvmsg(3, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recvmsg");
		}
		// The master went first at the end of the benchmark.
		if (n == 0)
			exit(0);
		if (msg.msg_flags & MSG_CTRUNC) {
			fprintf(stderr, "caccept worker: descriptors truncated\n");
			exit(1);
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			int nf = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			// Counted before the closes, as in listenLoop.
			__atomic_fetch_add(&handled, (unsigned long)nf, __ATOMIC_SEQ_CST);
			for (int j = 0; j < nf; j++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof(int));
				close(fd);
			}
		}
	}
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: caccept listen|master|worker N\n");
		return 2;
	}
	nworkers = atoi(argv[2]);
	if (nworkers < 1) {
		fprintf(stderr, "caccept: workers %s\n", argv[2]);
		return 2;
	}
	void *(*loop)(void *);
	if (strcmp(argv[1], "listen") == 0) {
		loop = listenLoop;
	} else if (strcmp(argv[1], "master") == 0) {
		loop = masterLoop;
		for (int i = 0; i < nworkers; i++)
			blocking(4 + i);
	} else if (strcmp(argv[1], "worker") == 0) {
		loop = workerLoop;
	} else {
		fprintf(stderr, "caccept: unknown mode %s\n", argv[1]);
		return 2;
	}
	blocking(3);
	pthread_t t;
	int err = pthread_create(&t, NULL, loop, NULL);
	if (err != 0) {
		errno = err;
		die("pthread_create");
	}
	printf("ok\n");
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof line, stdin) != NULL) {
		struct rusage ru;
		if (getrusage(RUSAGE_SELF, &ru) < 0)
			die("getrusage");
		long long ns = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
		               (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
		printf("%lld %lu %lu\n", ns, __atomic_load_n(&handled, __ATOMIC_SEQ_CST),
		       __atomic_load_n(&sent, __ATOMIC_SEQ_CST));
		fflush(stdout);
	}
	// exit, not pthread_exit: the loop thread is blocked in the kernel.
	return 0;
}
