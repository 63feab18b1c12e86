package main

// The authorization-service targets of the one-key case: nginx alone in
// front of the upstream, the baseline of the recipe, and nginx asking the
// Redis gateway's authorization endpoint through deploy/authz/nginx.conf,
// measured in the same rounds as keygate as the proxy so that the two ways
// of running keygate compare within one run.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	nginxAloneName = "nginx alone"
	nginxAuthzName = "nginx + keygate authz"
	// recipePath is relative to the repository root, where the load test
	// runs (it builds ./cmd/keygate from there too).
	recipePath = "deploy/authz/nginx.conf"
)

// startFunc starts a process that the load test stops at its end.
type startFunc func(env []string, name string, args ...string) (*exec.Cmd, error)

// nginxSetup is the decision, made before the gateways start, to measure
// nginx: the Redis gateway then also serves the authorization endpoint.
type nginxSetup struct {
	bin   string
	authz string // the Redis gateway's KEYGATE_AUTHZ_ADDR
}

// newNginx returns the setup when the run measures nginx: -nginx is on, the
// one-key case runs and nginx is installed. Otherwise it returns nil, and
// says so when nginx is missing.
func newNginx(o options, authzAddr string) *nginxSetup {
	if !o.nginx || !slices.Contains(o.cases, "one") {
		return nil
	}
	bin, ok := nginxBinary()
	if !ok {
		fmt.Println("nginx not found: the authorization-service targets are left out (apt-get install nginx)")
		return nil
	}
	return &nginxSetup{bin: bin, authz: authzAddr}
}

// gatewayEnv is what the Redis gateway needs to answer nginx: the endpoint,
// and nginx's address trusted for X-Forwarded-For, as the recipe asks.
func (n *nginxSetup) gatewayEnv() []string {
	return []string{"KEYGATE_AUTHZ_ADDR=" + n.authz, "KEYGATE_TRUSTED_PROXIES=127.0.0.1"}
}

// start runs nginx alone and nginx with the recipe asking g, and returns
// their targets once both and g's endpoint accept connections.
func (n *nginxSetup) start(start startFunc, dir, upAddr string, port func() string, g *gateway) ([]target, error) {
	recipe, err := os.ReadFile(recipePath)
	if err != nil {
		return nil, fmt.Errorf("the nginx recipe: %w", err)
	}
	alone, authz := port(), port()
	withAuthz, err := nginxRecipe(string(recipe), authz, n.authz, upAddr)
	if err != nil {
		return nil, err
	}
	confs := []struct{ dir, listen, http string }{
		{filepath.Join(dir, "nginx-alone"), alone, nginxAlone(alone, upAddr)},
		{filepath.Join(dir, "nginx-authz"), authz, withAuthz},
	}
	for _, c := range confs {
		if err := startNginx(start, n.bin, c.dir, c.http); err != nil {
			return nil, err
		}
	}
	for _, c := range confs {
		if err := waitListen(c.listen); err != nil {
			log, _ := os.ReadFile(filepath.Join(c.dir, "error.log"))
			return nil, fmt.Errorf("nginx: %w\n%s", err, log)
		}
	}
	if err := waitListen(n.authz); err != nil {
		return nil, fmt.Errorf("%s's authorization endpoint: %w", g.name, err)
	}
	return []target{{name: nginxAloneName, addr: alone}, {name: nginxAuthzName, addr: authz, gw: g}}, nil
}

// nginxBinary finds nginx on PATH or Debian's /usr/sbin/nginx.
func nginxBinary() (string, bool) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, true
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx", true
	}
	return "", false
}

// nginxAlone is the http { } block of nginx proxying to the upstream with
// nothing else, pooling upstream connections as the recipe does.
func nginxAlone(listen, upstream string) string {
	return fmt.Sprintf(`upstream backend {
    server %s;
    keepalive 64;
}
server {
    listen %s;
    location / {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://backend;
    }
}
`, upstream, listen)
}

// nginxRecipe is the recipe as written but for its three addresses: where
// nginx listens, keygate's authorization endpoint and the backend. A recipe
// that no longer has one of them is an error, not a silent measurement of
// something else.
func nginxRecipe(recipe, listen, authz, upstream string) (string, error) {
	for _, r := range []struct{ from, to string }{
		{"listen 8000;", "listen " + listen + ";"},
		{"server 127.0.0.1:8001;", "server " + authz + ";"},
		{"server 127.0.0.1:8080;", "server " + upstream + ";"},
	} {
		if !strings.Contains(recipe, r.from) {
			return "", fmt.Errorf("%s has no %q", recipePath, r.from)
		}
		recipe = strings.ReplaceAll(recipe, r.from, r.to)
	}
	return recipe, nil
}

// nginxConf is a whole nginx.conf around httpConf: in the foreground, every
// file of its own under dir, no access log (the gateways log at warn).
func nginxConf(dir, httpConf string) string {
	return fmt.Sprintf(`daemon off;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, httpConf)
}

// startNginx writes nginxConf under dir and starts nginx on it.
func startNginx(start startFunc, bin, dir, httpConf string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(nginxConf(dir, httpConf)), 0o600); err != nil {
		return err
	}
	// -e: the error log before the configuration is read (Debian's default
	// is /var/log/nginx/error.log).
	if _, err := start(nil, bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")); err != nil {
		return fmt.Errorf("starting nginx: %w", err)
	}
	return nil
}

// printNginxRatios prints, when the case measured nginx, nginx + keygate
// authz against nginx alone and against keygate as the proxy on the same
// gateway, at each connection count and at one.
func printNginxRatios(targets []target, conns []int, rps func(name string, conns int) result, p50 map[string]time.Duration) {
	var authz *target
	for i := range targets {
		if targets[i].name == nginxAuthzName {
			authz = &targets[i]
		}
	}
	if authz == nil {
		return
	}
	proxy := ""
	for _, t := range targets {
		if t.gw == authz.gw && t.name != nginxAuthzName {
			proxy = t.name
		}
	}
	fmt.Println()
	for _, c := range conns {
		a, alone, px := rps(nginxAuthzName, c), rps(nginxAloneName, c), rps(proxy, c)
		fmt.Printf("%s at %d connections: %.2f× %s (%.0f vs %.0f req/s, p50 %s vs %s), %.2f× %s as the proxy (%.0f vs %.0f req/s, p50 %s vs %s)\n",
			nginxAuthzName, c, a.rps/alone.rps, nginxAloneName, a.rps, alone.rps, a.p50.Round(time.Microsecond), alone.p50.Round(time.Microsecond),
			a.rps/px.rps, proxy, a.rps, px.rps, a.p50.Round(time.Microsecond), px.p50.Round(time.Microsecond))
	}
	fmt.Printf("at one connection (p50): %s %s, %s %s, %s as the proxy %s\n",
		nginxAuthzName, p50[nginxAuthzName].Round(time.Microsecond), nginxAloneName, p50[nginxAloneName].Round(time.Microsecond),
		proxy, p50[proxy].Round(time.Microsecond))
}
