package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/nginxtest"
)

// TestNginxRecipe: the measured configuration is the recipe with its three
// addresses replaced, so it asks keygate before every request and forwards
// to the load test's upstream.
func TestNginxRecipe(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", recipePath))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := nginxRecipe(string(b), "127.0.0.1:41000", "127.0.0.1:41001", "127.0.0.1:41002")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"auth_request /_keygate;", "listen 127.0.0.1:41000;", "server 127.0.0.1:41001;",
		"server 127.0.0.1:41002;", "proxy_pass http://keygate_authz/authz;", "proxy_pass http://keygate_backend;"} {
		if !strings.Contains(conf, want) {
			t.Errorf("configuration lacks %q", want)
		}
	}
	for _, gone := range []string{"listen 8000;", "server 127.0.0.1:8001;", "server 127.0.0.1:8080;"} {
		if strings.Contains(conf, gone) {
			t.Errorf("configuration still has the recipe's %q", gone)
		}
	}
	if _, err := nginxRecipe("upstream x { server 127.0.0.1:8001; }", "a", "b", "c"); err == nil {
		t.Error("a recipe without its listen line was accepted")
	}
}

// TestNginxAloneForwards runs the baseline target as the load test does
// and checks the upstream answers through it, then that stopAll ends nginx
// (master and workers).
func TestNginxAloneForwards(t *testing.T) {
	bin := nginxtest.Binary(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "from upstream "+r.URL.Path)
	}))
	defer up.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := l.Addr().String()
	l.Close()
	var procs []*exec.Cmd
	start := func(env []string, name string, args ...string) (*exec.Cmd, error) {
		c := exec.Command(name, args...)
		if err := c.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, c)
		return c, nil
	}
	dir := t.TempDir()
	if err := startNginx(start, bin, dir, nginxAlone(listen, strings.TrimPrefix(up.URL, "http://"))); err != nil {
		t.Fatal(err)
	}
	defer stopAll(&procs)
	if err := waitListen(listen); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Fatalf("%v\n%s", err, log)
	}
	resp, err := http.Get("http://" + listen + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "from upstream /x" {
		t.Errorf("through nginx: %d %q", resp.StatusCode, body)
	}
	stopAll(&procs)
	procs = nil
	if c, err := net.Dial("tcp", listen); err == nil {
		c.Close()
		t.Errorf("%s still accepts after stopAll", listen)
	}
}
