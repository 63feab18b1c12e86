package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/fleet"
)

// keygateBinary is the keygate binary, built once for the package's tests
// (TestMain removes it).
var keygateBinary fleet.Binary

func TestMain(m *testing.M) {
	code := m.Run()
	keygateBinary.Close()
	os.Exit(code)
}

// buildKeygate returns the keygate binary, built on first use.
func buildKeygate(t *testing.T) string {
	t.Helper()
	return keygateBinary.Path(t)
}

// cleanEnv is the test's environment without KEYGATE_* variables, plus
// extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// TestBinary builds `keygate` and runs it as a subprocess: a configuration
// error exits 1 with one line naming the variable; SIGTERM drains a request
// in flight before the process exits 0.
func TestBinary(t *testing.T) {
	bin := buildKeygate(t)

	t.Run("config errors", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		for _, tc := range []struct {
			env  []string
			want string
			// started: the logger was running, so log lines come first and
			// the error is the last line.
			started bool
		}{
			{nil, "KEYGATE_UPSTREAM_URL: required but not set", false},
			{[]string{"KEYGATE_UPSTREAM_URL=http://127.0.0.1:1", "KEYGATE_STALE_AUTH=soon"}, "KEYGATE_STALE_AUTH: cannot parse as a duration", false},
			{[]string{"KEYGATE_UPSTREAM_URL=http://127.0.0.1:1", "KEYGATE_LISTEN_ADDR=8000"}, "KEYGATE_LISTEN_ADDR: want host:port", false},
			{[]string{"KEYGATE_UPSTREAM_URL=http://127.0.0.1:1", "KEYGATE_ROUTES_FILE=/nonexistent/routes.yaml"}, "KEYGATE_ROUTES_FILE: ", false},
			{[]string{"KEYGATE_UPSTREAM_URL=http://127.0.0.1:1", "KEYGATE_ADMIN_ADDR=127.0.0.1:99999"}, "KEYGATE_ADMIN_ADDR: want host:port", false},
			{[]string{"KEYGATE_UPSTREAM_URL=http://127.0.0.1:1", "KEYGATE_METRICS_ADDR=127.0.0.1:0", "KEYGATE_LISTEN_ADDR=" + busy.Addr().String()},
				"KEYGATE_LISTEN_ADDR: data listener on " + busy.Addr().String(), true},
		} {
			cmd := exec.Command(bin, "serve")
			cmd.Env = cleanEnv(tc.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("%v: exit %v, want status 1", tc.env, err)
				continue
			}
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			last := lines[len(lines)-1]
			if (!tc.started && len(lines) != 1) || !strings.HasPrefix(last, "keygate: ") || !strings.Contains(last, tc.want) {
				t.Errorf("%v: stderr %q, want one line containing %q", tc.env, stderr.String(), tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("%v: stdout %q, want nothing", tc.env, stdout.String())
			}
		}
	})

	t.Run("SIGTERM drains in-flight requests", func(t *testing.T) {
		arrived := make(chan struct{}, 1)
		release := make(chan struct{})
		var releaseOnce sync.Once
		unblock := func() { releaseOnce.Do(func() { close(release) }) }
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				arrived <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			_, _ = io.WriteString(w, "done\n")
		}))
		defer up.Close()
		defer unblock()

		cmd := exec.Command(bin, "serve")
		cmd.Env = cleanEnv(
			"KEYGATE_UPSTREAM_URL="+up.URL,
			"KEYGATE_LISTEN_ADDR=127.0.0.1:0",
			"KEYGATE_ADMIN_ADDR=127.0.0.1:0",
			"KEYGATE_METRICS_ADDR=127.0.0.1:0",
			"KEYGATE_ADMIN_TOKEN="+testAdminToken,
		)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe() // logs go to stderr; it joins stdout below
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// exited closes when the process has exited; waitErr is then its
		// exit status.
		exited := make(chan struct{})
		var waitErr error
		addrs := make(chan [2]string, 1)
		var logs syncBuffer
		go func() {
			// The listeners' bound addresses come from the JSON log.
			sc := bufio.NewScanner(out)
			var data, admin string
			for sc.Scan() {
				_, _ = logs.Write(append(sc.Bytes(), '\n'))
				var l struct{ Msg, Listener, Addr string }
				if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" {
					switch l.Listener {
					case "data":
						data = l.Addr
					case "admin":
						admin = l.Addr
					}
					if data != "" && admin != "" {
						addrs <- [2]string{data, admin}
						data = ""
					}
				}
			}
			waitErr = cmd.Wait()
			close(exited)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
			}
		})
		var a [2]string
		select {
		case a = <-addrs:
		case <-exited:
			t.Fatalf("keygate exited at start: %v\n%s", waitErr, logs.String())
		case <-time.After(15 * time.Second):
			t.Fatalf("keygate did not log its listeners\n%s", logs.String())
		}
		g := &gate{t: t, l: listeners{Data: a[0], Admin: a[1]}, logs: &logs}
		registerListeners(t, g.l)
		_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
		hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}

		type answer struct {
			status int
			body   string
			err    error
		}
		slow := make(chan answer, 1)
		go func() {
			req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+a[0]+"/slow", nil)
			req.Header.Set("X-API-Key", ks["k"].AccessSecret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				slow <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			slow <- answer{resp.StatusCode, string(b), err}
		}()
		select {
		case <-arrived:
		case <-time.After(15 * time.Second):
			t.Fatal("the slow request did not reach the upstream")
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// keygate stops accepting, but waits for the request in flight.
		deadline := time.Now().Add(10 * time.Second)
		for {
			c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			req, _ := http.NewRequest("GET", "http://"+a[0]+"/fast", nil)
			req.Header.Set("X-API-Key", hdr["X-API-Key"])
			resp, err := c.Do(req)
			if err != nil {
				break // listener closed: draining
			}
			resp.Body.Close()
			if time.Now().After(deadline) {
				t.Fatal("keygate still accepts connections 10s after SIGTERM")
			}
			time.Sleep(20 * time.Millisecond)
		}
		select {
		case <-exited:
			t.Fatalf("keygate exited with a request in flight: %v", waitErr)
		case ans := <-slow:
			t.Fatalf("the in-flight request ended before the upstream answered: %+v", ans)
		default:
		}
		unblock()
		select {
		case ans := <-slow:
			if ans.err != nil || ans.status != 200 || ans.body != "done\n" {
				t.Errorf("in-flight request during shutdown: %+v", ans)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the in-flight request did not finish")
		}
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("keygate exited with %v after SIGTERM, want 0\n%s", waitErr, logs.String())
			}
		case <-time.After(15 * time.Second):
			t.Fatal("keygate did not exit after draining")
		}
		if !strings.Contains(logs.String(), `"msg":"stopped"`) {
			t.Errorf("no stopped line in the log:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), ks["k"].AccessSecret) {
			t.Error("the log contains a secret")
		}
	})
}
