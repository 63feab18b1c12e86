// Package nginxtest runs a real nginx (Debian's package) for tests: in the
// foreground, on free loopback ports, with its pid file, logs and temporary
// files under the test's own directory, stopped when the test ends.
//
// Without an nginx binary on PATH (or /usr/sbin/nginx), tests that need one
// are skipped — unless KEYGATE_TEST_NGINX=require (set by make test and CI),
// in which case they fail.
package nginxtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

const startTimeout = 10 * time.Second

// Server is an nginx process owned by one test.
type Server struct {
	// Addr is the loopback host:port clients connect to.
	Addr string
	dir  string

	mu       sync.Mutex
	cmd      *exec.Cmd
	waitExit chan error
}

// Binary returns the nginx path, skipping or failing the test when there is
// none.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			return "/usr/sbin/nginx"
		}
		if os.Getenv("KEYGATE_TEST_NGINX") == "require" {
			t.Fatalf("nginx not found on PATH and KEYGATE_TEST_NGINX=require: install nginx")
		}
		t.Skipf("nginx not found on PATH (set KEYGATE_TEST_NGINX=require to fail instead)")
	}
	return bin
}

// Start runs nginx with httpConf as the contents of its http { } block.
// listen is the port httpConf's server listens on as written (its "listen
// <port>;" line); it is replaced by a free loopback port, which Addr names.
// Start returns once that port accepts connections.
func Start(t testing.TB, httpConf string, listen int) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	port := redistest.FreePort(t)
	from := fmt.Sprintf("listen %d;", listen)
	if !strings.Contains(httpConf, from) {
		t.Fatalf("nginxtest: the configuration has no %q line", from)
	}
	httpConf = strings.ReplaceAll(httpConf, from, fmt.Sprintf("listen 127.0.0.1:%d;", port))
	for _, sub := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, httpConf)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// -e: the error log before the configuration is read (Debian's default
	// is /var/log/nginx/error.log, which a test must not need).
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, cmd: cmd, waitExit: exited}
	t.Cleanup(s.Stop)
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case err := <-exited:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			t.Fatalf("nginx exited: %v\n%s", err, s.ErrorLog())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not accepting on %s after %s\n%s", s.Addr, startTimeout, s.ErrorLog())
		}
	}
	return s
}

// ErrorLog returns nginx's error log so far.
func (s *Server) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
	return string(b)
}

// Stop ends nginx (fast shutdown, SIGTERM) and waits for it, at most 10 s,
// then kills it. It is safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.waitExit:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.waitExit
	}
	s.cmd = nil
}
