// Command loadtest measures keygate side by side on loopback: a bare
// httputil.ReverseProxy, keygate on the embedded store and keygate on
// Redis, each in its own process in front of the same upstream, loaded by
// wrk (or a Go load generator when wrk is missing), in interleaved rounds.
//
// Three kinds of traffic, each with its own keys: one key; many keys in
// many organizations (20,000 in 100 by default) cycled evenly; and the same
// keys skewed, 1 % of them carrying 80 % of the requests. For each it
// prints requests/s and its ratio to the bare proxy at every connection
// count, p50 and p99, keygate's RSS and CPU per request (and the bare
// proxy's own CPU per request), the credential lookups that went to the
// store, Redis's CPU and commands per request (INFO cpu and INFO
// commandstats deltas), and the median latency at one connection. Before
// each case, every key is used once (unmeasured), so the figures are those
// of steady traffic.
//
// With nginx installed, the one-key case also measures nginx alone in front
// of the upstream and nginx asking keygate (the Redis gateway) through the
// auth_request recipe, deploy/authz/nginx.conf (nginx.go).
//
//	go run ./cmd/loadtest [-c 32,64] [-d 1s] [-rounds 3] [-cases one,many,skewed] [-leases auto|off] [-nginx=false]
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
	"math/rand/v2"
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
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
	var o options
	var conns, cases string
	var env multiFlag
	flag.StringVar(&conns, "c", "32,64", "connection counts, comma-separated")
	flag.DurationVar(&o.dur, "d", time.Second, "duration of each measurement (one connection: half of it)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; each figure is its target's median round")
	flag.StringVar(&cases, "cases", "one,many,skewed", "traffic: one (one key), many (-keys keys in -orgs orgs, cycled evenly), skewed (the same keys, 1% carrying 80% of requests)")
	flag.IntVar(&o.keys, "keys", 20000, "keys of the many and skewed cases")
	flag.IntVar(&o.orgs, "orgs", 100, "organizations the keys are spread over")
	flag.StringVar(&o.leases, "leases", "auto", "KEYGATE_QUOTA_LEASES of both gateways: auto or off (a keygate without leases ignores it)")
	flag.BoolVar(&o.nginx, "nginx", true, "with nginx installed, the one-key case also measures nginx alone and nginx + keygate authz (deploy/authz/nginx.conf); -nginx=false leaves them out")
	flag.Var(&env, "env", "extra KEYGATE_*=value for both gateways (repeatable), e.g. -env KEYGATE_AUTH_CACHE_TTL=120s")
	flag.DurationVar(&o.steady, "steady", 0, "after each case's rounds, load keygate on Redis alone this long at the first -c (e.g. 150s: longer than the background work's periods, last_used_at every minute and per-key folds every 2 minutes) and report Redis's CPU and commands per request over the whole of it, beside Redis's CPU at rest (5 s without traffic, measured first); 0 leaves it out")
	flag.Parse()
	for _, c := range strings.Split(conns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 || n > 4096 {
			fmt.Fprintf(os.Stderr, "loadtest: -c: want connection counts from 1 to 4096, got %q\n", c)
			os.Exit(2)
		}
		o.conns = append(o.conns, n)
	}
	for _, c := range strings.Split(cases, ",") {
		if _, ok := trafficOf(strings.TrimSpace(c), 1); !ok {
			fmt.Fprintf(os.Stderr, "loadtest: -cases: unknown case %q (one, many, skewed)\n", c)
			os.Exit(2)
		}
		o.cases = append(o.cases, strings.TrimSpace(c))
	}
	if o.leases != "auto" && o.leases != "off" {
		fmt.Fprintln(os.Stderr, "loadtest: -leases: want auto or off")
		os.Exit(2)
	}
	if o.keys < 100 || o.keys > 1_000_000 || o.orgs < 1 || o.orgs > o.keys {
		fmt.Fprintln(os.Stderr, "loadtest: want 100 <= -keys <= 1000000 and 1 <= -orgs <= -keys")
		os.Exit(2)
	}
	o.rounds = max(o.rounds, 1)
	o.dur = max(o.dur, 500*time.Millisecond)
	if o.steady < 0 || o.steady > time.Hour {
		fmt.Fprintln(os.Stderr, "loadtest: -steady: want a duration from 0 to 1h")
		os.Exit(2)
	}
	o.env = env
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

type options struct {
	conns      []int
	dur        time.Duration
	rounds     int
	cases      []string
	keys, orgs int
	leases     string
	env        []string
	nginx      bool
	// steady is the length of the steady-traffic measurement of keygate
	// on Redis after each case; zero leaves it out.
	steady time.Duration
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error {
	if !strings.HasPrefix(v, "KEYGATE_") || !strings.Contains(v, "=") {
		return errors.New("want KEYGATE_NAME=value")
	}
	*m = append(*m, v)
	return nil
}

// traffic is one kind of load: which keys, and how requests pick them.
type traffic struct {
	name  string
	title string
	many  bool // the many-keys set, not the one key
	skew  bool // 1% of the keys carry 80% of the requests
}

func trafficOf(name string, keys int) (traffic, bool) {
	switch name {
	case "one":
		return traffic{name: name, title: "one key"}, true
	case "many":
		return traffic{name: name, title: fmt.Sprintf("%d keys, cycled evenly", keys), many: true}, true
	case "skewed":
		return traffic{name: name, title: fmt.Sprintf("%d keys, 1%% of them carrying 80%% of requests", keys), many: true, skew: true}, true
	}
	return traffic{}, false
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

// result is one measurement of one target.
type result struct {
	rps      float64
	requests float64
	p50, p99 time.Duration
	rss      int64   // KiB, peak; keygate only
	cpuUS    float64 // CPU µs per request of keygate (or of the bare proxy)
	lookups  float64 // credential lookups that went to the store, per request
	redisUS  float64 // Redis CPU µs per request; keygate on Redis only
	redisCmd float64 // Redis commands per request
	// redisBy are the Redis commands per request by command.
	redisBy map[string]float64
	// failed counts non-2xx answers and socket errors: a loaded machine
	// can push store calls past KEYGATE_REDIS_TIMEOUT (503).
	failed float64
	// uncounted counts admissions without a charge (store unreachable or
	// timed out, KEYGATE_FAILURE_MODE=open): answered 200, but no result.
	uncounted float64
}

// gateway is one keygate process.
type gateway struct {
	name, data, admin, metrics string
	pid                        int
	redis                      bool
	// secrets: the one key, and the many keys (org i%orgs has key i).
	one  string
	many []string
}

// target is something to load: the bare proxy, a gateway, or nginx.
type target struct {
	name string
	addr string
	// gw is the gateway deciding, sampled around each measurement: nil
	// for the bare proxy, the upstream and nginx alone.
	gw *gateway
	// pid, when not 0 and gw is nil, is a process whose CPU per request
	// is sampled too (the bare proxy's own).
	pid int
}

func run(o options) error {
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
	defer stopAll(&procs)
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
	bareCmd, err := start(nil, self, "bareproxy", bareAddr, "http://"+upAddr)
	if err != nil {
		return err
	}
	redisAddr := port()
	_, redisPort, _ := net.SplitHostPort(redisAddr)
	if _, err := start(nil, "redis-server", "--port", redisPort, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"); err != nil {
		return fmt.Errorf("starting redis-server (apt-get install redis-server): %w", err)
	}
	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rc.Close()

	// nginx, when measured, asks the Redis gateway's authorization endpoint.
	ngx := newNginx(o, port())
	var gws []*gateway
	for _, store := range []struct{ name, url string }{{"keygate (embedded)", ""}, {"keygate (redis)", "redis://" + redisAddr}} {
		data, admin, metrics := port(), port(), port()
		env := []string{"KEYGATE_UPSTREAM_URL=http://" + upAddr, "KEYGATE_LISTEN_ADDR=" + data, "KEYGATE_ADMIN_ADDR=" + admin,
			"KEYGATE_METRICS_ADDR=" + metrics, "KEYGATE_ADMIN_TOKEN=bench", "KEYGATE_REDIS_URL=" + store.url, "KEYGATE_LOG_LEVEL=warn",
			"KEYGATE_QUOTA_LEASES=" + o.leases}
		if store.url != "" && ngx != nil {
			env = append(env, ngx.gatewayEnv()...)
		}
		c, err := start(append(env, o.env...), kg, "serve")
		if err != nil {
			return err
		}
		gws = append(gws, &gateway{name: store.name, data: data, admin: admin, metrics: metrics, pid: c.Process.Pid, redis: store.url != ""})
	}
	for _, a := range []string{upAddr, bareAddr, redisAddr, gws[0].data, gws[1].data, gws[0].admin, gws[1].admin} {
		if err := waitListen(a); err != nil {
			return err
		}
	}
	needMany := slices.ContainsFunc(o.cases, func(c string) bool { t, _ := trafficOf(c, o.keys); return t.many })
	for _, g := range gws {
		t0 := time.Now()
		if err := provision(g, needMany, o.keys, o.orgs); err != nil {
			return fmt.Errorf("%s: %w", g.name, err)
		}
		if needMany {
			fmt.Printf("%s: %d keys in %d orgs created in %s\n", g.name, o.keys, o.orgs, time.Since(t0).Round(time.Millisecond))
		}
	}

	var nginxTargets []target
	if ngx != nil {
		if nginxTargets, err = ngx.start(start, dir, upAddr, port, gws[1]); err != nil {
			return err
		}
	}

	_, haveWrk := exec.LookPath("wrk")
	gen := "wrk"
	if haveWrk != nil {
		gen = "Go load generator (install wrk for better figures)"
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("loopback, %d cores, generator %s, %d rounds of %s per target and connection count (median round shown), KEYGATE_QUOTA_LEASES=%s %s\nload average before: %s\n",
		runtime.NumCPU(), gen, o.rounds, o.dur, o.leases, strings.Join(o.env, " "), strings.TrimSpace(string(load)))

	targets := []target{{name: "bare ReverseProxy", addr: bareAddr, pid: bareCmd.Process.Pid}}
	for _, g := range gws {
		targets = append(targets, target{name: g.name, addr: g.data, gw: g})
	}
	m := &meter{dir: dir, useWrk: haveWrk == nil, redis: rc}
	for _, name := range o.cases {
		tr, _ := trafficOf(name, o.keys)
		ts := targets
		if name == "one" {
			ts = append(slices.Clone(targets), nginxTargets...)
		}
		if err := runCase(m, tr, ts, upAddr, o); err != nil {
			return fmt.Errorf("%s: %w", tr.title, err)
		}
	}
	for _, g := range gws {
		fmt.Printf("%s: %s\n", g.name, storeHealth(g.metrics))
	}
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Printf("load average after: %s\n", strings.TrimSpace(string(load)))
	return nil
}

// runCase measures every target under one kind of traffic: rounds, and in
// each round every target at every connection count, then at one.
func runCase(m *meter, tr traffic, targets []target, upAddr string, o options) error {
	keysOf := func(t target) []string {
		g := t.gw
		if g == nil {
			g = targets[1].gw // the bare proxy and nginx alone get the same headers, unread
		}
		if tr.many {
			return g.many
		}
		return []string{g.one}
	}
	// Warm-up: every key once through each gateway (its credential cache
	// and its per-key state, so that what is measured is steady traffic,
	// not first sights), then connections and heap sizes.
	for _, t := range targets {
		ks := keysOf(t)
		if t.gw != nil && len(ks) > 1 {
			if n := touchEach(t.addr, ks, slices.Max(o.conns)); n > 0 {
				fmt.Printf("%s warm-up: %d of %d keys got no 200 in three tries\n", t.name, n, len(ks))
			}
		}
		warm := max(time.Second, o.dur)
		if _, err := m.load(t, ks, false, slices.Max(o.conns), warm); err != nil {
			return fmt.Errorf("%s warm-up: %w", t.name, err)
		}
	}
	runs := map[string][]result{}
	single := map[string][]result{}
	for range o.rounds {
		for _, t := range targets {
			for _, c := range o.conns {
				r, err := m.load(t, keysOf(t), tr.skew, c, o.dur)
				if err != nil {
					return fmt.Errorf("%s at %d connections: %w", t.name, c, err)
				}
				k := t.name + "\x00" + strconv.Itoa(c)
				runs[k] = append(runs[k], r)
			}
			s, err := m.load(t, keysOf(t), tr.skew, 1, o.dur/2)
			if err != nil {
				return fmt.Errorf("%s at one connection: %w", t.name, err)
			}
			single[t.name] = append(single[t.name], s)
		}
		s, err := m.load(target{name: "upstream direct", addr: upAddr}, []string{"x"}, false, 1, o.dur/2)
		if err != nil {
			return fmt.Errorf("upstream at one connection: %w", err)
		}
		single["upstream direct"] = append(single["upstream direct"], s)
	}

	fmt.Printf("\n### %s\n\n", tr.title)
	fmt.Println("| target | conns | req/s | × bare | p50 | p99 | RSS | CPU µs/req (own process) | store lookups/req | Redis CPU µs/req | Redis cmds/req | failed, uncounted (all rounds) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range o.conns {
		bare := median(runs[targets[0].name+"\x00"+strconv.Itoa(c)], func(r result) float64 { return r.rps })
		for _, t := range targets {
			r := median(runs[t.name+"\x00"+strconv.Itoa(c)], func(r result) float64 { return r.rps })
			row := fmt.Sprintf("| %s | %d | %.0f | %.2f | %s | %s |", t.name, c, r.rps, r.rps/bare.rps, r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond))
			switch {
			case t.gw == nil && t.pid != 0:
				row += fmt.Sprintf(" | %.1f | | | |", r.cpuUS)
			case t.gw == nil:
				row += " | | | | |"
			case t.gw.redis:
				row += fmt.Sprintf(" %.1f MiB | %.1f | %.3f | %.2f | %.2f |", float64(r.rss)/1024, r.cpuUS, r.lookups, r.redisUS, r.redisCmd)
			default:
				row += fmt.Sprintf(" %.1f MiB | %.1f | %.3f | — | — |", float64(r.rss)/1024, r.cpuUS, r.lookups)
			}
			if t.gw == nil {
				row += fmt.Sprintf(" %.0f |", r.failed)
			} else {
				row += fmt.Sprintf(" %.0f, %.0f |", r.failed, r.uncounted)
			}
			fmt.Println(row)
		}
	}
	for _, c := range o.conns {
		for _, t := range targets {
			if t.gw == nil || !t.gw.redis {
				continue
			}
			r := median(runs[t.name+"\x00"+strconv.Itoa(c)], func(r result) float64 { return r.rps })
			fmt.Printf("\n%s at %d connections, Redis commands per request by command: %s", t.name, c, topCommands(r.redisBy, 8))
		}
	}
	fmt.Printf("\n\nat one connection (p50): ")
	names := append([]string{"upstream direct"}, func() []string {
		var out []string
		for _, t := range targets {
			out = append(out, t.name)
		}
		return out
	}()...)
	p50 := map[string]time.Duration{}
	for i, n := range names {
		p50[n] = median(single[n], func(r result) float64 { return float64(r.p50) }).p50
		if i > 0 {
			fmt.Print(", ")
		}
		fmt.Printf("%s %s", n, p50[n].Round(time.Microsecond))
	}
	bare := p50[targets[0].name]
	fmt.Printf("\nkeygate over the bare proxy at one connection: embedded %+dµs, redis %+dµs\n",
		(p50[targets[1].name] - bare).Microseconds(), (p50[targets[2].name] - bare).Microseconds())
	printNginxRatios(targets, o.conns, func(name string, c int) result {
		return median(runs[name+"\x00"+strconv.Itoa(c)], func(r result) float64 { return r.rps })
	}, p50)
	if o.steady > 0 {
		if err := steadyRedis(m, tr, targets, keysOf, o); err != nil {
			return err
		}
	}
	if n, err := m.redis.DBSize(context.Background()).Result(); err == nil {
		fmt.Printf("Redis keys after this case: %d\n", n)
	}
	return nil
}

// steadyRedis loads keygate on Redis alone for o.steady: the rounds' short
// measurements leave out background work that falls due once a minute or
// two (last_used_at, per-key folds), which steady traffic pays for.
func steadyRedis(m *meter, tr traffic, targets []target, keysOf func(target) []string, o options) error {
	i := slices.IndexFunc(targets, func(t target) bool { return t.gw != nil && t.gw.redis })
	if i < 0 {
		return nil
	}
	t := targets[i]
	idle := m.redisIdle()
	r, err := m.load(t, keysOf(t), tr.skew, o.conns[0], o.steady)
	if err != nil {
		return fmt.Errorf("%s steady: %w", t.name, err)
	}
	fmt.Printf("%s alone, steady for %s at %d connections: %.0f req/s, RSS %.1f MiB, Redis CPU %.2f µs/req, Redis cmds/req %.3f (%s)\n",
		t.name, o.steady, o.conns[0], r.rps, float64(r.rss)/1024, r.redisUS, r.redisCmd, topCommands(r.redisBy, 10))
	if r.rps > 0 {
		fmt.Printf("Redis with no traffic (its own timers, keygate idle): %.0f µs of CPU per second, %.2f µs per request at this rate (part of the figure above)\n",
			idle, idle/r.rps)
	}
	return nil
}

// idleSettle and idleSpan frame redisIdle's measurement: blocks given back
// after the traffic that came before, then a measurement of Redis at rest.
const (
	idleSettle = 2 * time.Second
	idleSpan   = 5 * time.Second
)

// redisIdle returns the CPU Redis spends per second without traffic
// (microseconds): its own timers (expiry sampling, cron at hz 10) and
// keygate's idle background calls. The per-request figures include it, and
// at a few thousand requests per second on a slow machine it is a
// noticeable part of them.
func (m *meter) redisIdle() float64 {
	time.Sleep(idleSettle)
	before := m.redisStats()
	time.Sleep(idleSpan)
	after := m.redisStats()
	return (after.cpu - before.cpu) * 1e6 / idleSpan.Seconds()
}

// meter runs measurements and samples the processes around them.
type meter struct {
	dir     string
	useWrk  bool
	redis   *redis.Client
	scripts map[string]string // wrk scripts by key list and mode
	seq     int
}

// load runs one measurement of t with requests spread over keys (skewed or
// cycled), and samples keygate and Redis around it.
func (m *meter) load(t target, keys []string, skew bool, conns int, dur time.Duration) (result, error) {
	var before redisStats
	var cpu0, miss0, open0 float64
	if t.gw == nil && t.pid != 0 {
		cpu0 = cpuSeconds(t.pid)
	}
	if t.gw != nil {
		cpu0 = cpuSeconds(t.gw.pid)
		miss0 = metricSum(t.gw.metrics, "keygate_auth_cache_lookups_total", `result="miss"`)
		open0 = metricSum(t.gw.metrics, "keygate_fail_open_admits_total", "")
		if t.gw.redis {
			before = m.redisStats()
		}
	}
	done := make(chan struct{})
	var peak atomic.Int64
	var wg sync.WaitGroup
	if t.gw != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(200 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-done:
					return
				case <-tk.C:
					peak.Store(max(peak.Load(), rssKiB(t.gw.pid)))
				}
			}
		}()
	}
	var r result
	var err error
	if m.useWrk {
		r, err = m.loadWrk(t.addr, keys, skew, conns, dur)
	} else {
		r, err = loadGo(t.addr, keys, skew, conns, dur)
	}
	close(done)
	wg.Wait()
	if err == nil && t.gw == nil && t.pid != 0 && r.requests > 0 {
		r.cpuUS = (cpuSeconds(t.pid) - cpu0) * 1e6 / r.requests
	}
	if err != nil || t.gw == nil || r.requests == 0 {
		return r, err
	}
	r.rss = max(peak.Load(), rssKiB(t.gw.pid))
	r.cpuUS = (cpuSeconds(t.gw.pid) - cpu0) * 1e6 / r.requests
	r.lookups = (metricSum(t.gw.metrics, "keygate_auth_cache_lookups_total", `result="miss"`) - miss0) / r.requests
	r.uncounted = metricSum(t.gw.metrics, "keygate_fail_open_admits_total", "") - open0
	if t.gw.redis {
		after := m.redisStats()
		r.redisUS = (after.cpu - before.cpu) * 1e6 / r.requests
		r.redisCmd = (after.calls - before.calls) / r.requests
		r.redisBy = map[string]float64{}
		for k, v := range after.byCmd {
			if d := (v - before.byCmd[k]) / r.requests; d > 0 {
				r.redisBy[k] = d
			}
		}
	}
	return r, nil
}

// redisStats are the totals of INFO cpu and INFO commandstats.
type redisStats struct {
	cpu   float64 // seconds, user + system
	calls float64 // commands, without the INFO calls that read them
	// byCmd are the calls by command (scripts' own commands counted under
	// theirs, EVALSHA under its own).
	byCmd map[string]float64
}

func (m *meter) redisStats() redisStats {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := m.redis.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return redisStats{}
	}
	return parseRedisInfo(info)
}

// parseRedisInfo sums CPU and command calls from INFO cpu and commandstats.
func parseRedisInfo(info string) redisStats {
	s := redisStats{byCmd: map[string]float64{}}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case k == "used_cpu_sys" || k == "used_cpu_user":
			f, _ := strconv.ParseFloat(v, 64)
			s.cpu += f
		case strings.HasPrefix(k, "cmdstat_") && k != "cmdstat_info":
			calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
			f, _ := strconv.ParseFloat(calls, 64)
			s.calls += f
			s.byCmd[strings.TrimPrefix(k, "cmdstat_")] += f
		}
	}
	return s
}

// provision creates an effectively unlimited plan, one org with one key,
// and, when many is set, keys keys spread over orgs organizations.
func provision(g *gateway, many bool, keys, orgs int) error {
	client := &http.Client{Timeout: 10 * time.Second}
	post := func(path, body string, out any) error {
		req, _ := http.NewRequest("POST", "http://"+g.admin+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer bench")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != 201 {
			return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		if out != nil {
			return json.Unmarshal(b, out)
		}
		return nil
	}
	newOrg := func(name string) (string, error) {
		var org struct{ ID string }
		err := post("/admin/v1/orgs", `{"name":"`+name+`","plan_id":1}`, &org)
		return org.ID, err
	}
	newKey := func(org, name string) (string, error) {
		var key struct {
			AccessSecret string `json:"access_secret"`
		}
		err := post("/admin/v1/orgs/"+org+"/keys", `{"name":"`+name+`","permissions":["read"]}`, &key)
		return key.AccessSecret, err
	}
	if err := post("/admin/v1/plans", `{"id":1,"name":"bench","period":"month","max_api_requests":1000000000000}`, nil); err != nil {
		return err
	}
	org, err := newOrg("bench")
	if err != nil {
		return err
	}
	if g.one, err = newKey(org, "bench"); err != nil || !many {
		return err
	}
	ids := make([]string, orgs)
	for i := range ids {
		if ids[i], err = newOrg("bench-" + strconv.Itoa(i)); err != nil {
			return err
		}
	}
	g.many = make([]string, keys)
	var next atomic.Int64
	errs := make(chan error, 16)
	for range 16 {
		go func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= keys {
					errs <- nil
					return
				}
				// A create whose reply timed out may have been retried by
				// go-redis and then answer 409 for a key it did create (its
				// secret is lost): take another name.
				var s string
				var err error
				for attempt := range 3 {
					if s, err = newKey(ids[i%orgs], "k"+strconv.Itoa(i)+"-"+strconv.Itoa(attempt)); err == nil {
						break
					}
				}
				if err != nil {
					errs <- err
					return
				}
				g.many[i] = s
			}
		}()
	}
	for range 16 {
		if e := <-errs; e != nil && err == nil {
			err = e
			next.Store(int64(keys)) // stop the others
		}
	}
	return err
}

// stopAll ends the processes: SIGTERM first, as nginx's workers outlive a
// killed master, then a kill for any still running after 10 s.
func stopAll(procs *[]*exec.Cmd) {
	for _, p := range *procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range *procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			_ = p.Process.Kill()
			<-done
		}
	}
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

// wrkScript is the Lua script that spreads wrk's requests over the keys in
// keyFile: each thread cycles from its own offset, or, skewed, sends 80 %
// of its requests to the first 1 % of the keys.
const wrkScript = `local keys = {}
for line in io.lines(%q) do keys[#keys + 1] = line end
local n = #keys
local hot = math.max(1, math.floor(n / 100))
local skew = %t
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local i = 0
function init(args)
  i = ((tid or 0) * 7919) %% n
  math.randomseed((tid or 0) * 1000 + 7)
end
function request()
  local k
  if skew and n > hot then
    if math.random() < 0.8 then k = keys[math.random(hot)] else k = keys[hot + math.random(n - hot)] end
  else
    i = i %% n + 1
    k = keys[i]
  end
  return wrk.format("GET", "/", {["X-API-Key"] = k})
end
`

// script returns a wrk script for the keys (written once per key list).
func (m *meter) script(keys []string, skew bool) (string, error) {
	id := fmt.Sprintf("%p-%d-%t", &keys[0], len(keys), skew)
	if p, ok := m.scripts[id]; ok {
		return p, nil
	}
	if m.scripts == nil {
		m.scripts = map[string]string{}
	}
	m.seq++
	keyFile := filepath.Join(m.dir, fmt.Sprintf("keys-%d.txt", m.seq))
	if err := os.WriteFile(keyFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		return "", err
	}
	p := filepath.Join(m.dir, fmt.Sprintf("wrk-%d.lua", m.seq))
	if err := os.WriteFile(p, []byte(fmt.Sprintf(wrkScript, keyFile, skew)), 0o600); err != nil {
		return "", err
	}
	m.scripts[id] = p
	return p, nil
}

var (
	wrkLine     = regexp.MustCompile(`(?m)^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$`)
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)`)
	wrkErrors   = regexp.MustCompile(`(?m)^\s*(?:Non-2xx or 3xx responses|Socket errors):(.*)$`)
)

func (m *meter) loadWrk(addr string, keys []string, skew bool, conns int, dur time.Duration) (result, error) {
	args := []string{"-t", strconv.Itoa(min(conns, 2)), "-c", strconv.Itoa(conns), "-d", fmt.Sprintf("%ds", max(1, int(dur.Round(time.Second).Seconds()))), "--latency"}
	if len(keys) == 1 {
		args = append(args, "-H", "X-API-Key: "+keys[0])
	} else {
		s, err := m.script(keys, skew)
		if err != nil {
			return result{}, err
		}
		args = append(args, "-s", s)
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
	units := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}
	for _, mm := range wrkLine.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(mm[2], 64)
		d := time.Duration(v * float64(units[mm[3]]))
		if mm[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if mm := wrkRequests.FindStringSubmatch(string(out)); mm != nil {
		r.requests, _ = strconv.ParseFloat(mm[1], 64)
	}
	for _, mm := range wrkErrors.FindAllStringSubmatch(string(out), -1) {
		for _, f := range strings.FieldsFunc(mm[1], func(r rune) bool { return r < '0' || r > '9' }) {
			n, _ := strconv.ParseFloat(f, 64)
			r.failed += n
		}
	}
	if r.rps == 0 {
		return r, errors.New("wrk printed no Requests/sec")
	}
	return r, nil
}

// touchEach sends one request with each key, from conns connections: the
// warm-up that makes every key known before anything is measured. A key
// whose request fails (a loaded machine can push a first sight's store
// call past KEYGATE_REDIS_TIMEOUT) is tried again, up to three times; it
// returns how many keys never got a 200.
func touchEach(addr string, keys []string, conns int) int {
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for range 3 {
		var next atomic.Int64
		var mu sync.Mutex
		var failed []string
		var wg sync.WaitGroup
		for range conns {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= len(keys) {
						return
					}
					req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
					req.Header.Set("X-API-Key", keys[i])
					resp, err := client.Do(req)
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					if err != nil || resp.StatusCode != http.StatusOK {
						mu.Lock()
						failed = append(failed, keys[i])
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		if keys = failed; len(keys) == 0 {
			break
		}
	}
	return len(keys)
}

func loadGo(addr string, keys []string, skew bool, conns int, dur time.Duration) (result, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var bad atomic.Int64
	var wg sync.WaitGroup
	n := len(keys)
	hot := max(1, n/100)
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			i := c * 7919 % n
			var mine []time.Duration
			for ctx.Err() == nil {
				var k string
				if skew && n > hot {
					if rng.Float64() < 0.8 {
						k = keys[rng.IntN(hot)]
					} else {
						k = keys[hot+rng.IntN(n-hot)]
					}
				} else {
					i = (i + 1) % n
					k = keys[i]
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
				req.Header.Set("X-API-Key", k)
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					bad.Add(1)
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(lat) == 0 {
		return result{}, errors.New("no request completed")
	}
	slices.Sort(lat)
	return result{rps: float64(len(lat)) / dur.Seconds(), requests: float64(len(lat)), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], failed: float64(bad.Load())}, nil
}

// topCommands formats the n commands with the most calls per request.
func topCommands(by map[string]float64, n int) string {
	names := make([]string, 0, len(by))
	for k := range by {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case by[a] > by[b]:
			return -1
		case by[a] < by[b]:
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range names[:min(n, len(names))] {
		parts = append(parts, fmt.Sprintf("%s %.3f", k, by[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// median returns the result whose key is the median of rs, with the peak
// RSS of all of them and their failed and uncounted requests summed.
func median(rs []result, key func(result) float64) result {
	if len(rs) == 0 {
		return result{}
	}
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
	m.failed, m.uncounted = 0, 0
	for _, r := range rs {
		m.rss = max(m.rss, r.rss)
		m.failed += r.failed
		m.uncounted += r.uncounted
	}
	return m
}

// metricSum scrapes a gateway's /metrics and sums the samples of name that
// carry label (any, when empty); 0 when unreachable.
func metricSum(addr, name, label string) float64 {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") || !strings.Contains(line, label) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// storeHealth reports the store errors and uncounted admissions a gateway
// saw during the run, from its /metrics: a fast run that skipped counting
// would be no result.
func storeHealth(addr string) string {
	s := fmt.Sprintf("%.0f store errors, %.0f uncounted (fail-open) admits",
		metricSum(addr, "keygate_store_errors_total", ""), metricSum(addr, "keygate_fail_open_admits_total", ""))
	for _, o := range []string{"store_unavailable", "invalid_credential", "quota_exceeded", "rate_limited", "internal_error"} {
		if n := metricSum(addr, "keygate_requests_total", `outcome="`+o+`"`); n > 0 {
			s += fmt.Sprintf(", %.0f %s", n, o)
		}
	}
	return s
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
