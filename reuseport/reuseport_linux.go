package reuseport

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Classic BPF ancillary load (linux/filter.h), not exported by x/sys: a load
// from SKF_AD_OFF+SKF_AD_CPU yields raw_smp_processor_id(), the CPU running
// the socket lookup, which on loopback is the sending thread's CPU.
const (
	skfAdOff = 0xfffff000 // SKF_AD_OFF, (-0x1000) as a 32-bit operand
	skfAdCPU = 36         // SKF_AD_CPU
)

var reuseOpt = reuseSockopt{unix.SO_REUSEPORT, "SO_REUSEPORT"}

// maxGroupOS is MaxGroup: Linux grows a reuseport group without a fixed
// limit (struct sock_reuseport is reallocated as members join).
const maxGroupOS = MaxGroup

func setDeferAccept(fd, seconds int) error {
	return setsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT", seconds)
}

func setFastOpen(fd, qlen int) error {
	return setsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN, "TCP_FASTOPEN", qlen)
}

func cpuProgram(n uint32) ([]Instruction, error) {
	return []Instruction{
		{Op: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdOff + skfAdCPU},
		{Op: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: n},
		{Op: unix.BPF_RET | unix.BPF_A},
	}, nil
}

func attachProgram(c syscall.RawConn, prog []Instruction) error {
	filter := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("reuseport: SO_ATTACH_REUSEPORT_CBPF: %w", os.NewSyscallError("setsockopt", serr))
	}
	return nil
}

// migrateReq reads the sysctl of the caller's network namespace (/proc/sys/net
// follows the reading task's netns); a kernel before 5.14 has no such file.
func migrateReq() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return false
	}
	n, err := parseSysctlInt(b)
	return err == nil && n != 0
}
