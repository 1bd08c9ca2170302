package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"golang.org/x/sys/unix"
)

// TestCheckOutputsSameFile gives two outputs that name one file through a
// symbolic link, a hard link or a linked directory: the check must refuse
// them, as one would overwrite the other after the run. It must create
// and change nothing either way.
func TestCheckOutputsSameFile(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name    string
		setup   func(dir string) error
		o, json string
		same    bool
	}{
		{"symbolic link to a new file", func(dir string) error {
			return os.Symlink("r.json", filepath.Join(dir, "alias.md"))
		}, "alias.md", "r.json", true},
		{"symbolic link to an existing file", func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "r.json"), []byte("earlier"), 0o644); err != nil {
				return err
			}
			return os.Symlink(filepath.Join(dir, "r.json"), filepath.Join(dir, "alias.md"))
		}, "alias.md", "r.json", true},
		{"hard link", func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "r.json"), []byte("earlier"), 0o644); err != nil {
				return err
			}
			return os.Link(filepath.Join(dir, "r.json"), filepath.Join(dir, "hard.md"))
		}, "hard.md", "r.json", true},
		{"linked directory, new file", func(dir string) error {
			return os.Symlink(".", filepath.Join(dir, "sub"))
		}, "sub/r", "r", true},
		{"linked directory, existing file", func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "r"), []byte("earlier"), 0o644); err != nil {
				return err
			}
			return os.Symlink(".", filepath.Join(dir, "sub"))
		}, "sub/r", "r", true},
		{"chain of links", func(dir string) error {
			if err := os.Symlink("b", filepath.Join(dir, "a")); err != nil {
				return err
			}
			return os.Symlink("r.json", filepath.Join(dir, "b"))
		}, "a", "r.json", true},
		{"link through a linked directory's ..", linkedParent, "alias.md", "a/r.json", true},
		{"link through a linked directory's .., other file", linkedParent, "alias.md", "r.json", false},
		{"different files", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "r.json"), []byte("earlier"), 0o644)
		}, "r.md", "r.json", false},
		{"link to another file", func(dir string) error {
			return os.Symlink("other", filepath.Join(dir, "alias.md"))
		}, "alias.md", "r.json", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tt.setup(dir); err != nil {
				t.Fatal(err)
			}
			before := tree(t, dir)
			err := checkOutputs(filepath.Join(dir, tt.o), "", filepath.Join(dir, tt.json))
			if tt.same && (err == nil || !strings.Contains(err.Error(), "-o and -json both write")) {
				t.Errorf("checkOutputs: %v, want -o and -json refused as one file", err)
			}
			if !tt.same && err != nil {
				t.Errorf("checkOutputs: %v, want no error", err)
			}
			if diff := cmp.Diff(before, tree(t, dir)); diff != "" {
				t.Errorf("the check changed the directory (-before +after):\n%s", diff)
			}
		})
	}
}

// linkedParent makes alias.md in dir a link to sub/../r.json, sub a link
// to a/b: the link names a/r.json, not r.json, as ".." leaves b.
func linkedParent(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join("a", "b"), filepath.Join(dir, "sub")); err != nil {
		return err
	}
	return os.Symlink("sub/../r.json", filepath.Join(dir, "alias.md"))
}

// TestCheckOutputsDanglingLink gives an output that is a symbolic link to
// a file that does not exist yet: the check passes, and leaves no file
// behind, neither at the link's target nor anywhere else.
func TestCheckOutputsDanglingLink(t *testing.T) {
	fdcensus.Verify(t)
	// sub links to a/b: sub/.. is a.
	for _, target := range []string{"target.md", "sub/../target.md", "sub/target.md", "/ABS/target.md", "link-to-link"} {
		t.Run(target, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join("a", "b"), filepath.Join(dir, "sub")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("sub/../target.md", filepath.Join(dir, "link-to-link")); err != nil {
				t.Fatal(err)
			}
			target = strings.Replace(target, "/ABS", dir, 1)
			if err := os.Symlink(target, filepath.Join(dir, "r.md")); err != nil {
				t.Fatal(err)
			}
			before := tree(t, dir)
			if err := checkOutputs(filepath.Join(dir, "r.md"), "", ""); err != nil {
				t.Errorf("checkOutputs: %v", err)
			}
			if diff := cmp.Diff(before, tree(t, dir)); diff != "" {
				t.Errorf("the check changed the directory (-before +after):\n%s", diff)
			}
		})
	}
}

// TestCheckOutputsFIFO gives a named pipe as an output (a reader, such as
// "-o >(tee r.md)", takes the report from it): the check must neither
// wait for a reader nor open the pipe, whose closing would end the
// reader's input before the report is written.
func TestCheckOutputsFIFO(t *testing.T) {
	fdcensus.Verify(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(os.NewSyscallError("mkfifo", err))
	}
	check := func() error {
		done := make(chan error, 1)
		go func() { done <- checkOutputs(fifo, "", "") }()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Errorf("checkOutputs still waiting after 5 s")
			for range 100 {
				unblockWrite(fifo)
				select {
				case err := <-done:
					return err
				case <-time.After(50 * time.Millisecond):
				}
			}
			t.Fatal("checkOutputs never returned")
			return nil
		}
	}
	// No reader yet.
	if err := check(); err != nil {
		t.Errorf("checkOutputs: %v", err)
	}
	// A reader waiting: it must get the report, not an end of file from
	// the check.
	got := make(chan string, 1)
	go func() {
		b, _ := os.ReadFile(fifo)
		got <- string(b)
	}()
	if err := check(); err != nil {
		t.Errorf("checkOutputs: %v", err)
	}
	// Whether the reader opened before or after the check, this meets it,
	// unless the check's close sent the reader away.
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(fifo, []byte("report"), 0o644) }()
	select {
	case s := <-got:
		if s != "report" {
			t.Errorf("the reader got %q, want %q", s, "report")
		}
	case <-time.After(10 * time.Second):
		t.Error("the reader got nothing within 10 s")
		unblockWrite(fifo) // lets it see the end of the file
		<-got
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Errorf("writing the report: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("writing the report still waits for a reader after 10 s")
		for range 100 {
			unblockWrite(fifo)
			select {
			case <-wrote:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		t.Fatal("writing the report never returned")
	}
}

// unblockWrite ends an open of the FIFO at path for writing that waits for
// a reader: it opens the FIFO for reading and closes it again.
func unblockWrite(path string) {
	if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
		unix.Close(fd)
	}
}

// TestFinishWriteFails: an output that fails must not hide the run's
// failures, on stderr and in the error, nor its interruption.
func TestFinishWriteFails(t *testing.T) {
	fdcensus.Verify(t)
	bad := filepath.Join(t.TempDir(), "nonexistent", "x.svg")
	interrupted, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		wantIs  error
		wantErr []string
	}{
		{"failures", t.Context(), errFailures, []string{"-svg: open " + bad}},
		{"interrupted", interrupted, context.Canceled, []string{"-svg: open " + bad, "interrupted"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := &Results{Failures: []string{"scm/x round 1: boom"}}
			var stdout, stderr strings.Builder
			err := finish(tt.ctx, res, &stdout, &stderr, os.DevNull, bad, "")
			if !errors.Is(err, tt.wantIs) {
				t.Errorf("finish: %v, want it to wrap %v", err, tt.wantIs)
			}
			for _, want := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("finish: %v, want an error containing %q", err, want)
				}
			}
			if err != nil && strings.Contains(err.Error(), "partial report written") {
				t.Errorf("finish: %v: claims the report written", err)
			}
			if !strings.Contains(stderr.String(), "bench: failed: scm/x round 1: boom\n") {
				t.Errorf("stderr %q does not name the failure", stderr.String())
			}
		})
	}
}

// tree lists the entries under dir, with a link's target or a file's
// contents.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			out[rel] = "-> " + target
			return err
		case d.IsDir():
			out[rel] = "dir"
		default:
			b, err := os.ReadFile(path)
			out[rel] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
