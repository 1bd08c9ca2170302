// Command bench is handoff's benchmark suite and the runner that turns it
// into a report: descriptor passing (scmrights) against the naive stdlib
// way and a C sendmsg/recvmsg loop, ipcframe against raw bytes, the accept
// path (in place, master handoff, shared listener, reuseport, and in place
// and handoff in C) with server CPU per connection, examples/hello's
// requests/s under mini-cluster against standalone (cmd/mini-cluster's
// BenchmarkHello, with the master's RSS), and mini-cluster restart and
// respawn latency.
//
// Usage, from the module root:
//
//	go run ./bench [-rounds 5] [-o report.md] [-svg plot.svg] [-json results.json] [-perf] [-run regexp]
//	go run ./bench -quick          # CI: one round of a subset, < 60 s on 2 cores
//	go run ./bench -from results.json -o report.md -svg plot.svg   # re-render, measure nothing
//
// -run also selects among the cases of a -from file; -from refuses the
// flags that say how to measure (-rounds, -quick, -perf), and -quick, one
// round, refuses -rounds. -quick's figures decide no target: its report
// has no verdict column, its JSON no verdict. An interrupted run (SIGINT,
// SIGTERM, SIGHUP, and SIGPIPE from a closed standard output or error;
// during -perf too) writes the report of the rounds that completed, marked
// as partial. The output paths are checked before anything is built
// (without leaving a file, without opening a FIFO or device, refusing two
// that name one file through links); afterwards the JSON, the report and the plot are
// written in that order, each whatever happened to the others, and
// results saved nowhere go to standard error as JSON.
//
// The runner builds the benchmarks once (go test -c ./bench, and
// go test -c ./cmd/mini-cluster for BenchmarkHello, which runs in that
// package's directory), compiles bench/testdata/cloop.c and caccept.c with
// the system C compiler (without one, the C variants are skipped, saying
// why) and builds ./cmd/mini-cluster and ./examples/hello, then runs each
// case as its test binary with a -test.bench filter. Every round runs
// every case once, and a case runs its baseline and its variants back to back in one process, so
// drift over the run hits all of them alike, starting with a different
// variant each round (HANDOFF_BENCH_ROTATE), so that no variant always runs
// first or last. It reports median [min–max]
// over the rounds, and ratios computed within each round against that
// round's baseline (the median of the per-round ratios), beside the design
// brief's targets; progress goes to standard error. Comparisons between
// two variants (scm against naive) are per-round ratios too. A target whose
// baseline was not measured is undecided ("no baseline"), not missed.
// Ratios print with two decimals rounded toward the side that fails a
// target, so that a printed figure never looks met when the exact one is
// not.
//
// The benchmarks are ordinary go test benchmarks (benchstat reads their
// output) and can be run without the runner:
//
//	go test -run='^$' -bench=SCM/seqpacket -benchtime=300ms ./bench
//
// Who should not use it: nobody imports it; it is a command. Its figures
// are only comparable within one run on one machine.
//
// Platform support: the benchmarks are Linux only; the other systems build
// the runner, which refuses to measure there and only renders -from
// results. -perf needs perf with syscall tracepoints; without them the
// report says so. A variant skipped or failed under perf gets no counts.
//
// Ownership: every process a benchmark starts is reaped before it returns,
// and every descriptor it opens is closed (checked by the fd and process
// censuses). The runner starts each benchmark binary in a process group of
// its own and kills the group when interrupted, since a killed binary runs
// no cleanups; and also once the binary exits by itself (a panic, its
// -test.timeout, the OOM killer), before reaping it, when its helpers would
// otherwise be orphaned. It is the child subreaper of its descendants
// (PR_SET_CHILD_SUBREAPER), so that orphans that left the group come to it
// and are killed and reaped too; any process left running is a failure.
// A runner killed outright (SIGKILL) takes its child with it (Pdeathsig),
// and the benchmark binary (this package's or cmd/mini-cluster's) and its
// Go helpers die with their own parents (PR_SET_PDEATHSIG, asked for by
// HANDOFF_BENCH_PDEATHSIG), as do the other processes they start
// (Pdeathsig): a mini-cluster master, whose workers die with it, the
// standalone hello and the C baselines.
// Temporary files live in one directory removed when the runner exits,
// except after a SIGKILL.
package main
