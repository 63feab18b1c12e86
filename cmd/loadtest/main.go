// Command loadtest measures keygate side by side on loopback: the upstream
// alone, a bare httputil.ReverseProxy, keygate on the embedded store and
// keygate on Redis, each in its own process, loaded by wrk (or a Go load
// generator when wrk is missing); with nginx installed also nginx alone in
// front of the upstream and nginx asking keygate (on Redis) through the
// auth_request recipe, deploy/authz/nginx.conf. It prints requests/s, p50
// and p99 latency as ratios to the upstream alone, the latency keygate adds
// at one connection, and keygate's RSS under load.
//
//	go run ./cmd/loadtest [-c 64] [-d 5s]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "upstream":
			serveUpstream(os.Args[2])
			return
		case "bareproxy":
			serveBareProxy(os.Args[2], os.Args[3])
			return
		}
	}
	conns := flag.Int("c", 64, "connections")
	dur := flag.Duration("d", 3*time.Second, "duration of each measurement")
	rounds := flag.Int("rounds", 3, "rounds; each target reports its median round")
	flag.Parse()
	if err := run(*conns, *dur, max(*rounds, 1)); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// serveUpstream is the backend: a small fixed body, like a typical API.
func serveUpstream(addr string) {
	body := []byte(`{"ok":true,"items":[1,2,3]}` + "\n")
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})}
	fmt.Fprintln(os.Stderr, srv.ListenAndServe())
}

// serveBareProxy is the baseline every proxy pays: httputil.ReverseProxy
// with a transport and buffer pool tuned like keygate's, and nothing else.
func serveBareProxy(addr, upstream string) {
	u, _ := url.Parse(upstream)
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 512
	pool := &bufferPool{New: func() any { b := make([]byte, 32<<10); return &b }}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.SetXForwarded() }, Transport: t, BufferPool: pool}
	srv := &http.Server{Addr: addr, Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintln(os.Stderr, srv.ListenAndServe())
}

// bufferPool recycles ReverseProxy's copy buffers.
type bufferPool sync.Pool

func (p *bufferPool) Get() []byte  { return *((*sync.Pool)(p).Get().(*[]byte)) }
func (p *bufferPool) Put(b []byte) { (*sync.Pool)(p).Put(&b) }

type result struct {
	name     string
	rps      float64
	p50, p99 time.Duration
	rss      int64 // KiB, keygate only
}

func run(conns int, dur time.Duration, rounds int) error {
	dir, err := os.MkdirTemp("", "keygate-loadtest")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kg := filepath.Join(dir, "keygate")
	if out, err := exec.Command("go", "build", "-o", kg, "./cmd/keygate").CombinedOutput(); err != nil {
		return fmt.Errorf("building keygate: %v\n%s", err, out)
	}
	var procs []*exec.Cmd
	defer func() {
		// SIGTERM first: nginx's workers outlive a killed master.
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = p.Process.Kill()
				<-done
			}
		}
	}()
	start := func(env []string, name string, args ...string) (*exec.Cmd, error) {
		c := exec.Command(name, args...)
		c.Env = append(os.Environ(), env...)
		c.Stderr = io.Discard
		if err := c.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, c)
		return c, nil
	}
	port := func() string {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().String()
	}

	upAddr, bareAddr := port(), port()
	if _, err := start(nil, self, "upstream", upAddr); err != nil {
		return err
	}
	if _, err := start(nil, self, "bareproxy", bareAddr, "http://"+upAddr); err != nil {
		return err
	}
	redisAddr := port()
	_, redisPort, _ := net.SplitHostPort(redisAddr)
	if _, err := start(nil, "redis-server", "--port", redisPort, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"); err != nil {
		return fmt.Errorf("starting redis-server (apt-get install redis-server): %w", err)
	}

	type gw struct {
		name, data, admin, metrics string
		cmd                        *exec.Cmd
	}
	var gws []gw
	// The Redis gateway also serves the authorization endpoint, for nginx:
	// one process, one set of counters, measured in turns.
	authzAddr := port()
	for _, store := range []struct{ name, url string }{{"keygate (embedded)", ""}, {"keygate (redis)", "redis://" + redisAddr}} {
		data, admin, metrics := port(), port(), port()
		env := []string{"KEYGATE_UPSTREAM_URL=http://" + upAddr, "KEYGATE_LISTEN_ADDR=" + data, "KEYGATE_ADMIN_ADDR=" + admin,
			"KEYGATE_METRICS_ADDR=" + metrics, "KEYGATE_ADMIN_TOKEN=bench", "KEYGATE_REDIS_URL=" + store.url, "KEYGATE_LOG_LEVEL=warn"}
		if store.url != "" {
			env = append(env, "KEYGATE_AUTHZ_ADDR="+authzAddr, "KEYGATE_TRUSTED_PROXIES=127.0.0.1")
		}
		c, err := start(env, kg, "serve")
		if err != nil {
			return err
		}
		gws = append(gws, gw{store.name, data, admin, metrics, c})
	}
	for _, a := range append([]string{upAddr, bareAddr, redisAddr}, gws[0].data, gws[1].data, gws[0].admin, gws[1].admin) {
		if err := waitListen(a); err != nil {
			return err
		}
	}
	secrets := make([]string, len(gws))
	for i, g := range gws {
		if secrets[i], err = provision(g.admin); err != nil {
			return fmt.Errorf("%s: %w", g.name, err)
		}
	}

	type target struct {
		name, addr string
		header     string
		pid        int
	}
	targets := []target{
		{"upstream direct", upAddr, "", 0},
		{"bare ReverseProxy", bareAddr, "", 0},
		{gws[0].name, gws[0].data, "X-API-Key: " + secrets[0], gws[0].cmd.Process.Pid},
		{gws[1].name, gws[1].data, "X-API-Key: " + secrets[1], gws[1].cmd.Process.Pid},
	}
	withNginx := false
	if bin, ok := nginxBinary(); ok {
		alone, authz := port(), port()
		if err := startNginx(start, bin, filepath.Join(dir, "nginx-alone"), nginxAlone(alone, upAddr)); err != nil {
			return err
		}
		recipe, err := nginxRecipe(authz, authzAddr, upAddr)
		if err != nil {
			return err
		}
		if err := startNginx(start, bin, filepath.Join(dir, "nginx-authz"), recipe); err != nil {
			return err
		}
		for _, a := range []string{alone, authz, authzAddr} {
			if err := waitListen(a); err != nil {
				return fmt.Errorf("nginx: %w", err)
			}
		}
		targets = append(targets, target{"nginx alone", alone, "", 0},
			target{"nginx + keygate authz", authz, "X-API-Key: " + secrets[1], gws[1].cmd.Process.Pid})
		withNginx = true
	} else {
		fmt.Println("nginx not found: the authorization-service targets are left out (apt-get install nginx)")
	}
	_, haveWrk := exec.LookPath("wrk")
	gen := "wrk"
	if haveWrk != nil {
		gen = "Go load generator (install wrk for better figures)"
	}
	fmt.Printf("loopback, %d connections, %d rounds of %s per target (median round shown), generator: %s, %d cores\n\n", conns, rounds, dur, gen, numCPU())
	cpuOf := func() map[string]float64 {
		m := map[string]float64{}
		for _, p := range procs {
			m[filepath.Base(p.Path)+" "+strings.Join(p.Args[1:min(len(p.Args), 2)], "")+fmt.Sprint(p.Process.Pid)] = cpuSeconds(p.Process.Pid)
		}
		return m
	}
	for _, tg := range targets { // warm-up: connections, caches, JIT-free but GC-sized heaps
		if _, err := load(tg.addr, tg.header, conns, time.Second, haveWrk == nil, 0); err != nil {
			return fmt.Errorf("%s: %w", tg.name, err)
		}
	}
	// Targets take turns, round after round, and each keeps its median
	// round: a burst of noise on a shared machine then hits every target
	// alike instead of deciding one ratio.
	runs := make([][]result, len(targets))
	singles := make([][]result, len(targets))
	for range rounds {
		for i, tg := range targets {
			before := cpuOf()
			r, err := load(tg.addr, tg.header, conns, dur, haveWrk == nil, tg.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", tg.name, err)
			}
			if os.Getenv("LOADTEST_CPU") != "" {
				for k, v := range cpuOf() {
					if d := v - before[k]; d > 0.05 {
						fmt.Printf("  %-22s cpu %-40s %.2fs\n", tg.name, k, d)
					}
				}
			}
			r.name = tg.name
			runs[i] = append(runs[i], r)
			s, err := load(tg.addr, tg.header, 1, dur/2, haveWrk == nil, 0)
			if err != nil {
				return fmt.Errorf("%s at one connection: %w", tg.name, err)
			}
			s.name = tg.name
			singles[i] = append(singles[i], s)
		}
	}
	var results, single []result
	for i := range targets {
		results = append(results, median(runs[i], func(r result) float64 { return r.rps }))
		single = append(single, median(singles[i], func(r result) float64 { return float64(r.p50) }))
	}
	base := results[0]
	fmt.Printf("%-22s %12s %8s %10s %10s %10s\n", "target", "req/s", "×direct", "p50", "p99", "RSS")
	for _, r := range results {
		rss := ""
		if r.rss > 0 {
			rss = fmt.Sprintf("%.1f MiB", float64(r.rss)/1024)
		}
		fmt.Printf("%-22s %12.0f %8.2f %10s %10s %10s\n", r.name, r.rps, r.rps/base.rps, r.p50, r.p99, rss)
	}
	for _, g := range gws {
		fmt.Printf("%s: %s\n", g.name, storeHealth(g.metrics))
	}
	bare := results[1]
	fmt.Printf("\nkeygate vs bare ReverseProxy: embedded %.2f×, redis %.2f× requests/s\n", results[2].rps/bare.rps, results[3].rps/bare.rps)
	if withNginx {
		alone, authz := results[4], results[5]
		fmt.Printf("nginx + keygate authz (redis) vs nginx alone: %.2f× requests/s, p50 %s vs %s\n", authz.rps/alone.rps, authz.p50, alone.p50)
		fmt.Printf("nginx + keygate authz (redis) vs keygate as the proxy (redis): %.2f× requests/s, p50 %s vs %s\n", authz.rps/results[3].rps, authz.p50, results[3].p50)
	}
	fmt.Printf("\nat one connection (p50):\n")
	for _, s := range single {
		fmt.Printf("%-22s %10s  (+%s over direct)\n", s.name, s.p50, s.p50-single[0].p50)
	}
	return nil
}

func numCPU() int { return runtime.NumCPU() }

// provision creates an effectively unlimited plan, an org and a key.
func provision(admin string) (string, error) {
	post := func(path, body string, out any) error {
		req, _ := http.NewRequest("POST", "http://"+admin+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer bench")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 201 {
			return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		if out != nil {
			return json.Unmarshal(b, out)
		}
		return nil
	}
	if err := post("/admin/v1/plans", `{"id":1,"name":"bench","period":"month","max_api_requests":1000000000000}`, nil); err != nil {
		return "", err
	}
	var org struct{ ID string }
	if err := post("/admin/v1/orgs", `{"name":"bench","plan_id":1}`, &org); err != nil {
		return "", err
	}
	var key struct {
		AccessSecret string `json:"access_secret"`
	}
	err := post("/admin/v1/orgs/"+org.ID+"/keys", `{"name":"bench","permissions":["read"]}`, &key)
	return key.AccessSecret, err
}

func waitListen(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after 10s", addr)
}

// load runs one measurement; pid, when set, is sampled for RSS at the end.
func load(addr, header string, conns int, dur time.Duration, useWrk bool, pid int) (result, error) {
	var r result
	var err error
	done := make(chan struct{})
	var peak int64
	if pid > 0 {
		go func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					peak = max(peak, rssKiB(pid))
				}
			}
		}()
	}
	if useWrk {
		r, err = loadWrk(addr, header, conns, dur)
	} else {
		r, err = loadGo(addr, header, conns, dur)
	}
	close(done)
	r.rss = peak
	return r, err
}

var wrkLine = regexp.MustCompile(`(?m)^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$`)

func loadWrk(addr, header string, conns int, dur time.Duration) (result, error) {
	args := []string{"-t", strconv.Itoa(min(conns, 2)), "-c", strconv.Itoa(conns), "-d", fmt.Sprintf("%ds", max(int(dur.Seconds()), 1)), "--latency"}
	if header != "" {
		args = append(args, "-H", header)
	}
	out, err := exec.Command("wrk", append(args, "http://"+addr+"/")...).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	var r result
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "Requests/sec:" {
			r.rps, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	for _, m := range wrkLine.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		d := time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]))
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if strings.Contains(string(out), "Non-2xx") {
		return r, fmt.Errorf("wrk saw non-2xx responses:\n%s", out)
	}
	if r.rps == 0 {
		return r, errors.New("wrk printed no Requests/sec")
	}
	return r, nil
}

func loadGo(addr, header string, conns int, dur time.Duration) (result, error) {
	hk, hv, _ := strings.Cut(header, ": ")
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var failed error
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
				if hk != "" {
					req.Header.Set(hk, hv)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					mu.Lock()
					failed = fmt.Errorf("status %d", resp.StatusCode)
					mu.Unlock()
					break
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if failed != nil {
		return result{}, failed
	}
	if len(lat) == 0 {
		return result{}, errors.New("no request completed")
	}
	slices.Sort(lat)
	return result{rps: float64(len(lat)) / dur.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100]}, nil
}

// median returns the result whose key is the median of rs.
func median(rs []result, key func(result) float64) result {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b result) int {
		switch ka, kb := key(a), key(b); {
		case ka < kb:
			return -1
		case ka > kb:
			return 1
		}
		return 0
	})
	m := sorted[len(sorted)/2]
	for _, r := range rs { // report the peak RSS of all rounds
		m.rss = max(m.rss, r.rss)
	}
	return m
}

// storeHealth reports the store errors and uncounted admissions a gateway
// saw during the run, from its /metrics: a fast run that skipped counting
// would be no result.
func storeHealth(addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var errs, failOpen float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch {
		case strings.HasPrefix(line, "keygate_store_errors_total"):
			errs += v
		case strings.HasPrefix(line, "keygate_fail_open_admits_total"):
			failOpen += v
		}
	}
	return fmt.Sprintf("%.0f store errors, %.0f uncounted (fail-open) admits", errs, failOpen)
}

// cpuSeconds reads a process's user+system CPU time from /proc.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100 // clock ticks; 100 Hz on Linux
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// nginxBinary finds Debian's nginx.
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
// nothing else: the baseline of the authorization recipe.
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

// nginxRecipe is deploy/authz/nginx.conf (run from the repository root)
// with its addresses replaced.
func nginxRecipe(listen, authz, upstream string) (string, error) {
	b, err := os.ReadFile("deploy/authz/nginx.conf")
	if err != nil {
		return "", fmt.Errorf("the nginx recipe: %w", err)
	}
	conf := string(b)
	for from, to := range map[string]string{"listen 8000;": "listen " + listen + ";",
		"server 127.0.0.1:8001;": "server " + authz + ";", "server 127.0.0.1:8080;": "server " + upstream + ";"} {
		if !strings.Contains(conf, from) {
			return "", fmt.Errorf("deploy/authz/nginx.conf has no %q", from)
		}
		conf = strings.ReplaceAll(conf, from, to)
	}
	return conf, nil
}

// startNginx runs nginx in the foreground with httpConf as its http { }
// block, every file of its own under dir, and no access log (keygate's is
// at warn level too).
func startNginx(start func([]string, string, ...string) (*exec.Cmd, error), bin, dir, httpConf string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf(`daemon off;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log crit;
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
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	if _, err := start(nil, bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")); err != nil {
		return fmt.Errorf("starting nginx: %w", err)
	}
	return nil
}
