//go:build linux

package scmrights_test

import (
	"fmt"
	"log"
	"net"
	"os"

	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// Hand the write end of a pipe to the other side of a socket pair, which
// writes through it.
func ExampleSend() {
	a, b := mustPair()
	defer a.Close()
	defer b.Close()

	r, w, err := os.Pipe()
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	wfd, err := scmrights.Dup(w) // never w.Fd(): that would switch it to blocking mode
	w.Close()
	if err != nil {
		log.Fatal(err)
	}
	err = scmrights.Send(a, []byte("here is a pipe"), wfd)
	unix.Close(wfd) // the receiver has its own copy now
	if err != nil {
		log.Fatal(err)
	}

	buf := make([]byte, 64)
	fds := make([]int, 4)
	n, nfds, err := scmrights.Recv(b, buf, fds)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("received %q with %d descriptor\n", buf[:n], nfds)

	pipe := scmrights.File(fds[0], "pipe") // takes ownership of the descriptor
	fmt.Fprint(pipe, "written through the received descriptor")
	pipe.Close()
	msg := make([]byte, 64)
	n, _ = r.Read(msg)
	fmt.Println(string(msg[:n]))
	// Output:
	// received "here is a pipe" with 1 descriptor
	// written through the received descriptor
}

// mustPair returns a connected pair: Socketpair's second end is meant for a
// child process, but net.FileConn turns it into a connection here too.
func mustPair() (*net.UnixConn, *net.UnixConn) {
	a, f, err := scmrights.Socketpair(unix.SOCK_STREAM)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		log.Fatal(err)
	}
	return a, c.(*net.UnixConn)
}
