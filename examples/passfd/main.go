//go:build linux

// Command passfd shows descriptor passing end to end: it binds a TCP
// listener on 127.0.0.1, starts a copy of itself, hands the listener to that
// child over a unix socket pair, closes its own copy, and then connects to
// the port, which the child now serves.
//
//	go run ./examples/passfd
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"time"

	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

const childEnv = "PASSFD_CHILD"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if os.Getenv(childEnv) == "1" {
		err = child()
	} else {
		err = parent(ctx, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "passfd:", err)
		os.Exit(1)
	}
}

func parent(ctx context.Context, out io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	conn, remote, err := scmrights.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		return err
	}
	defer conn.Close()
	self, err := os.Executable()
	if err != nil {
		remote.Close()
		return err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.ExtraFiles = []*os.File{remote} // the child's descriptor 3
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	remote.Close()
	if err != nil {
		return err
	}
	defer cmd.Wait()
	fmt.Fprintf(out, "parent %d: listening on %s, handing the listener to child %d\n", os.Getpid(), ln.Addr(), cmd.Process.Pid)

	fd, err := scmrights.Dup(ln.(*net.TCPListener))
	if err != nil {
		return err
	}
	err = scmrights.Send(conn, []byte("listener"), fd)
	unix.Close(fd)
	if err != nil {
		return err
	}
	// The child holds the socket now; connections queue on it even before
	// it accepts, and closing this copy loses none of them.
	addr := ln.Addr().String()
	ln.Close()
	fmt.Fprintf(out, "parent %d: closed its own copy, connecting to %s\n", os.Getpid(), addr)

	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	fmt.Fprint(out, "server answered: ", line)
	return cmd.Wait()
}

func child() error {
	uc, err := scmrights.UnixConn(3)
	if err != nil {
		return err
	}
	defer uc.Close()
	buf := make([]byte, 64)
	fds := make([]int, 1)
	n, nfds, err := scmrights.Recv(uc, buf, fds)
	if err != nil {
		return err
	}
	if nfds != 1 || string(buf[:n]) != "listener" {
		return fmt.Errorf("unexpected message %q with %d descriptors", buf[:n], nfds)
	}
	ln, err := scmrights.Listener(fds[0]) // validates it really is a listening socket
	if err != nil {
		return err
	}
	defer ln.Close()
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = fmt.Fprintf(c, "hello from child %d, serving %s on a listener it received\n", os.Getpid(), ln.Addr())
	return err
}
