package main

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rssFileKiB reads the file-backed part of this process's resident set.
func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssFile:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

func TestReleaseStartupPages(t *testing.T) {
	before := rssFileKiB(t)
	n, err := releaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileKiB(t)
	if n <= 0 {
		t.Fatalf("released %d bytes of the binary's mappings", n)
	}
	if after >= before {
		t.Fatalf("file-backed resident set %d KiB before, %d KiB after releasing %d bytes", before, after, n)
	}
	// What was dropped comes back on use: code that ran only at start-up
	// (configuration parsing) runs again and gives the same answer.
	if _, err := loadConfig(map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:1"}); err != nil {
		t.Fatalf("configuration after the release: %v", err)
	}
	t.Logf("file-backed resident set %d KiB → %d KiB (released %d KiB of mappings)", before, after, n>>10)
}

// TestReleaseBinaryPagesEvery: the periodic release gives the binary's
// pages back while serving, and stops when its context ends.
func TestReleaseBinaryPagesEvery(t *testing.T) {
	before := rssFileKiB(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); releaseBinaryPagesEvery(ctx, 10*time.Millisecond) }()
	deadline := time.Now().Add(5 * time.Second)
	for rssFileKiB(t) >= before {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("file-backed resident set still %d KiB after 5s of releases", before)
		}
		runtime.Gosched()
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the release loop did not stop with its context")
	}
}
