// Package fleet runs real keygate processes for tests: N sidecars built
// from ./cmd/keygate, each on free loopback ports, sharing whatever store
// the caller's environment names. Tests that prove properties of several
// sidecars at once (exact quotas, a sidecar's crash, a store outage) need
// separate processes, not goroutines: SIGKILL must take a sidecar's
// in-memory state with it.
//
// Every process is killed when its test ends, and with the test process
// (Pdeathsig), so a failed test leaves nothing running.
package fleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// startTimeout bounds a sidecar's start, from exec to listening.
	startTimeout = 15 * time.Second
	// stopTimeout bounds a SIGTERM drain.
	stopTimeout = 30 * time.Second
	// logKeep is how much of a sidecar's log is kept for failure messages.
	logKeep = 256 << 10
)

// Build compiles cmd/keygate into a directory of t's and returns the
// binary's path. The Go build cache makes a second build in one test run
// a link step; a package whose tests need the binary several times shares
// one build with Binary.
func Build(t testing.TB) string {
	t.Helper()
	bin, err := build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func build(dir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("go not on PATH: %w", err)
	}
	bin := filepath.Join(dir, "keygate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/keygate/keygate/cmd/keygate").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building keygate: %w\n%s", err, out)
	}
	return bin, nil
}

// Binary is cmd/keygate built at most once for all the tests of a test
// binary (a link step costs seconds on a loaded machine). Its zero value
// is ready; Close, from TestMain, removes it.
type Binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Path builds the binary on first use and returns its path.
func (b *Binary) Path(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "keygate-bin"); b.err == nil {
			b.path, b.err = build(b.dir)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Close removes the binary, if it was built.
func (b *Binary) Close() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

// Sidecar is one running keygate process.
type Sidecar struct {
	// Data, Admin and Metrics are the listeners' host:port on loopback.
	Data, Admin, Metrics string

	t      testing.TB
	cmd    *exec.Cmd
	logs   *tailBuffer
	exited chan struct{}
	err    error // the exit status, once exited is closed
}

// Fleet is N sidecars started with the same environment.
type Fleet struct {
	Sidecars []*Sidecar
	bin      string
	env      map[string]string
}

// Start runs n sidecars of bin with env on top of loopback defaults (every
// listener on 127.0.0.1:0, info logs as JSON) and waits until all listen.
// env needs at least KEYGATE_UPSTREAM_URL; KEYGATE_QUOTA_LEASES and any
// other setting pass through unchanged.
func Start(t testing.TB, bin string, n int, env map[string]string) *Fleet {
	t.Helper()
	f := &Fleet{bin: bin, env: env}
	for range n {
		f.Sidecars = append(f.Sidecars, StartOne(t, bin, env))
	}
	return f
}

// Replace starts a new sidecar with the fleet's environment in place of
// the i-th (after a Kill, say).
func (f *Fleet) Replace(t testing.TB, i int) *Sidecar {
	t.Helper()
	f.Sidecars[i] = StartOne(t, f.bin, f.env)
	return f.Sidecars[i]
}

// StartOne runs one sidecar; see Start.
func StartOne(t testing.TB, bin string, env map[string]string) *Sidecar {
	t.Helper()
	vars := map[string]string{
		"KEYGATE_LISTEN_ADDR":  "127.0.0.1:0",
		"KEYGATE_ADMIN_ADDR":   "127.0.0.1:0",
		"KEYGATE_METRICS_ADDR": "127.0.0.1:0",
		"KEYGATE_LOG_FORMAT":   "json",
	}
	for k, v := range env {
		vars[k] = v
	}
	if l := vars["KEYGATE_LOG_LEVEL"]; l != "debug" {
		vars["KEYGATE_LOG_LEVEL"] = "info" // the listening lines name the ports
	}
	environ := make([]string, 0, len(os.Environ())+len(vars))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYGATE_") {
			environ = append(environ, kv)
		}
	}
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	cmd := exec.Command(bin, "serve")
	cmd.Env = environ
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("keygate stdout: %v", err)
	}
	cmd.Stderr = cmd.Stdout // logs go to stderr; read both as one stream
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting keygate: %v", err)
	}
	s := &Sidecar{t: t, cmd: cmd, logs: &tailBuffer{max: logKeep}, exited: make(chan struct{})}
	addrs := make(chan map[string]string, 1)
	go func() {
		s.scan(out, addrs)
		s.err = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.Kill)
	select {
	case a := <-addrs:
		s.Data, s.Admin, s.Metrics = a["data"], a["admin"], a["metrics"]
	case <-s.exited:
		t.Fatalf("keygate exited at start: %v\n%s", s.err, s.logs)
	case <-time.After(startTimeout):
		s.Kill()
		t.Fatalf("keygate did not listen within %s\n%s", startTimeout, s.logs)
	}
	return s
}

// scan keeps the log's tail and sends the listeners' addresses once data,
// admin and metrics have all logged theirs.
func (s *Sidecar) scan(out io.Reader, addrs chan<- map[string]string) {
	found := map[string]string{}
	sent := false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		_, _ = s.logs.Write(append(line, '\n'))
		if sent || !bytes.Contains(line, []byte(`"listening"`)) {
			continue
		}
		var l struct{ Msg, Listener, Addr string }
		if json.Unmarshal(line, &l) == nil && l.Msg == "listening" {
			found[l.Listener] = l.Addr
		}
		if found["data"] != "" && found["admin"] != "" && found["metrics"] != "" {
			addrs <- found
			sent = true
		}
	}
	_, _ = io.Copy(io.Discard, out)
}

// Pid is the sidecar's process id.
func (s *Sidecar) Pid() int { return s.cmd.Process.Pid }

// Kill ends the sidecar with SIGKILL, like a crash or an OOM kill, and
// waits until it has exited. It is safe to call twice.
func (s *Sidecar) Kill() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		s.t.Errorf("keygate %d did not exit after SIGKILL", s.Pid())
	}
}

// Stop sends SIGTERM and waits for the drain; it returns the exit status.
func (s *Sidecar) Stop() error {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signalling keygate: %w", err)
	}
	select {
	case <-s.exited:
		return s.err
	case <-time.After(stopTimeout):
		return fmt.Errorf("keygate %d did not stop within %s of SIGTERM", s.Pid(), stopTimeout)
	}
}

// Logs returns the tail of the sidecar's log.
func (s *Sidecar) Logs() string { return s.logs.String() }

// Metric scrapes /metrics and returns the sum of the samples of the metric
// name whose labels include every one of labels (`outcome="admitted"`);
// a metric that has no sample is 0.
func (s *Sidecar) Metric(ctx context.Context, name string, labels ...string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+s.Metrics+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scraping %s: %w", s.Metrics, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scraping %s: status %d", s.Metrics, resp.StatusCode)
	}
	return SumMetric(resp.Body, name, labels...)
}

// SumMetric reads Prometheus text exposition and sums the samples of name
// that carry every one of labels.
func SumMetric(r io.Reader, name string, labels ...string) (float64, error) {
	var sum float64
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		series, value, ok := cutLast(rest, ' ')
		if !ok {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(series, l) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

func cutLast(s string, sep byte) (string, string, bool) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
