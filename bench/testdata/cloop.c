// cloop: the C baseline for scmrights benchmarks. A plain blocking
// sendmsg/recvmsg loop, what a careful C programmer writes.
//
//   cloop send COUNT K P    send COUNT+1 messages of P bytes with K copies of
//                           one descriptor each, on the socket at fd 3
//   cloop recv COUNT K P    receive a warm-up message, then COUNT messages
//                           (closing every descriptor), then print "fds=N ns=T":
//                           the descriptors received and the nanoseconds from
//                           the end of the warm-up to the last message, timed
//                           here so that the parent's pipe reads do not count
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
	perror(what);
	exit(1);
}

int main(int argc, char **argv) {
	if (argc != 5)
		return 2;
	int sending = strcmp(argv[1], "send") == 0;
	long count = atol(argv[2]);
	int k = atoi(argv[3]);
	int p = atoi(argv[4]);
	int sock = 3;
	char *buf = calloc(1, p > 0 ? p : 1);
	size_t cspace = CMSG_SPACE(sizeof(int) * (k > 0 ? k : 1));
	char *cbuf = calloc(1, cspace);
	// The socket arrives in whatever mode the parent left it; C blocks.
	fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) & ~O_NONBLOCK);

	if (sending) {
		int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open");
		for (long i = 0; i <= count; i++) {
			struct iovec iov = {buf, (size_t)p};
			struct msghdr msg = {0};
			msg.msg_iov = &iov;
			msg.msg_iovlen = 1;
			msg.msg_control = cbuf;
			msg.msg_controllen = CMSG_SPACE(sizeof(int) * k);
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * k);
			int *fds = (int *)CMSG_DATA(c);
			for (int j = 0; j < k; j++)
				fds[j] = fd;
			size_t off = 0;
			while (off < (size_t)p) {
				iov.iov_base = buf + off;
				iov.iov_len = p - off;
				ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
				if (n < 0) {
					if (errno == EINTR)
						continue;
					die("sendmsg");
				}
				off += n;
				msg.msg_control = NULL;
				msg.msg_controllen = 0;
			}
		}
		return 0;
	}

	long fdsTotal = 0;
	long long want = (long long)p * (count + 1), got = 0;
	long long warm = p;
	struct timespec t0 = {0}, t1;
	while (got < want) {
		struct iovec iov = {buf, (size_t)p};
		struct msghdr msg = {0};
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = cbuf;
		msg.msg_controllen = cspace;
		ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recvmsg");
		}
		if (n == 0) {
			fprintf(stderr, "cloop: early EOF\n");
			return 1;
		}
		if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
			fprintf(stderr, "cloop: truncated\n");
			return 1;
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			int nf = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int *fds = (int *)CMSG_DATA(c);
			for (int j = 0; j < nf; j++)
				close(fds[j]);
			fdsTotal += nf;
		}
		long long before = got;
		got += n;
		if (before < warm && got >= warm)
			clock_gettime(CLOCK_MONOTONIC, &t0);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	printf("fds=%ld ns=%lld\n", fdsTotal, ns);
	return 0;
}
