package main

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Env describes the machine a report was measured on.
type Env struct {
	Date       string `json:"date"`
	OS         string `json:"os"`
	Kernel     string `json:"kernel"`
	CPUModel   string `json:"cpu_model,omitempty"`
	CPUs       int    `json:"cpus"`
	Go         string `json:"go"`
	CC         string `json:"cc"`
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

// firstLine runs a command and returns the first line of its output, or
// "unavailable" if it fails.
func firstLine(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return "unavailable"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// readFirstLine returns the first line of a file, or "unavailable".
func readFirstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unavailable"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line
}

// LoadAverage returns the 1, 5 and 15 minute load averages (Linux
// /proc/loadavg), or "unavailable".
func LoadAverage() string {
	f := strings.Fields(readFirstLine("/proc/loadavg"))
	if len(f) < 3 {
		return "unavailable"
	}
	return strings.Join(f[:3], " ")
}

// CollectEnv describes this machine; LoadAfter is filled in at the end.
func CollectEnv(ctx context.Context, goTool, cc string) Env {
	e := Env{
		Date:       time.Now().UTC().Format("2006-01-02 15:04 MST"),
		OS:         runtime.GOOS + "/" + runtime.GOARCH,
		Kernel:     readFirstLine("/proc/sys/kernel/osrelease"),
		CPUs:       runtime.NumCPU(),
		Go:         firstLine(ctx, goTool, "env", "GOVERSION"),
		CC:         "none",
		LoadBefore: LoadAverage(),
	}
	if e.Kernel == "unavailable" {
		e.Kernel = firstLine(ctx, "uname", "-sr")
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if cc != "" {
		e.CC = firstLine(ctx, cc, "--version")
	}
	return e
}
