// Package redistest starts private redis-server processes for tests: one
// server, or a local Redis Cluster of three masters, each on free loopback
// ports and stopped when the test ends. Tests never touch a developer's Redis.
//
// Without a redis-server binary on PATH, tests that need one are skipped —
// unless KEYGATE_TEST_REDIS=require (set by make test and CI), in which case
// they fail.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const startTimeout = 10 * time.Second

// Server is a redis-server process owned by one test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Addr returns the server's host:port on loopback.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL returns a redis:// URL for the server.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// binary returns the redis-server path, skipping or failing the test when it
// is missing.
func binary(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("KEYGATE_TEST_REDIS") == "require" {
			t.Fatalf("%s not found on PATH and KEYGATE_TEST_REDIS=require: install redis-server", name)
		}
		t.Skipf("%s not found on PATH (set KEYGATE_TEST_REDIS=require to fail instead)", name)
	}
	return bin
}

// Start starts a private redis-server for t and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, nil)
}

// StartDurable starts a private redis-server that writes every change to
// its append-only file before answering, so data survives Stop and Restart
// (a crash and recovery).
func StartDurable(t testing.TB) *Server {
	t.Helper()
	return start(t, []string{"--appendonly", "yes", "--appendfsync", "always"})
}

func start(t testing.TB, extra []string) *Server {
	t.Helper()
	s := &Server{t: t, bin: binary(t, "redis-server"), dir: t.TempDir(), port: FreePort(t)}
	s.args = append([]string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}, extra...)
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Restart starts the server again on the same port after Stop (or starts
// it the first time), and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	cmd := exec.Command(s.bin, s.args...)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.cmd = cmd
	if err := waitPing(s.Addr()); err != nil {
		s.t.Fatalf("redis-server on %s: %v (log: %s)", s.Addr(), err, s.log())
	}
}

// Stop kills the server at once, like a crash. It is safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused process must be able to die
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Pause freezes the server with SIGSTOP: connections stay open, nothing
// answers. Resume undoes it; Stop also resumes first.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		if err := s.cmd.Process.Signal(sig); err != nil {
			s.t.Errorf("signalling redis-server: %v", err)
		}
	}
}

func (s *Server) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Client starts a private server and returns a client for it, closed when
// the test ends.
func Client(t testing.TB) redis.UniversalClient {
	t.Helper()
	return NewClient(t, Start(t).Addr())
}

// NewClient returns a client for addrs (one address, or the nodes of a
// cluster), closed when the test ends.
func NewClient(t testing.TB, addrs ...string) redis.UniversalClient {
	t.Helper()
	c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: addrs, IsClusterMode: len(addrs) > 1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Flush empties every database the client reaches, so a subtest starts from
// nothing.
func Flush(t testing.TB, c redis.UniversalClient) {
	t.Helper()
	ctx := context.Background()
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
	} else {
		err = c.FlushAll(ctx).Err()
	}
	if err != nil {
		t.Fatalf("flushing redis: %v", err)
	}
}

// Cluster is a local Redis Cluster of three masters.
type Cluster struct {
	Nodes []*Server
}

// Addrs returns the addresses of the cluster's nodes.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr()
	}
	return out
}

// StartCluster starts three cluster-enabled servers, joins them into one
// cluster with all 16384 slots assigned, and waits until it is healthy.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	cli := binary(t, "redis-cli")
	c := &Cluster{}
	for range 3 {
		c.Nodes = append(c.Nodes, start(t, []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
		}))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for _, n := range c.Nodes {
		rc := redis.NewClient(&redis.Options{Addr: n.Addr()})
		for {
			info, err := rc.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				_ = rc.Close()
				t.Fatalf("cluster node %s not ok after %s: %v %s", n.Addr(), startTimeout, err, info)
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = rc.Close()
	}
	return c
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitPing polls addr until it answers PING, for at most startTimeout.
func waitPing(addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING reply within %s: %w", startTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
