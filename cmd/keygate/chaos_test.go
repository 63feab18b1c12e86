package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/fleet"
	"github.com/keygate/keygate/internal/redistest"
)

// The chaos tests run four real keygate processes (internal/fleet) on one
// real redis-server and prove the quota guarantees of DESIGN.md ("Quota
// leases") from what users see: what the upstream received, what the
// clients got and what the operator API says was charged — with nothing
// killed, with a sidecar killed by SIGKILL mid-round, and with Redis killed
// and restarted under load in both failure modes.
//
// The lease mode is a parameter: KEYGATE_TEST_QUOTA_LEASES lists the modes
// to run (comma-separated), each passed to the sidecars as
// KEYGATE_QUOTA_LEASES. By default the exact-quota test runs "auto" (the
// default) and "off", the crash tests "auto" only, to keep CI short. A
// binary without leases ignores the variable and charges per request.
const (
	chaosSidecars = 4
	chaosQuota    = 500
	chaosRequests = 2000 // per round, all in flight at once
	chaosRounds   = 3
	chaosKeys     = 4 // keys of the org, none with a limit of its own
)

// chaosTolerance is what a lease mode's design allows beyond per-request
// exactness. Per-request charging (KEYGATE_QUOTA_LEASES=off, and every
// binary before leases) allows nothing: every field is zero.
type chaosTolerance struct {
	// refusedWhileHeld bounds the requests of a burst refused while
	// another sidecar still held unspent units (the limit had units left).
	refusedWhileHeld int
	// heldByKilled bounds the units a SIGKILLed sidecar takes with it:
	// reserved, never admitted, counted as used.
	heldByKilled int
	// admitsWhileDown: requests may be admitted counted while Redis is
	// down (from a block reserved before the outage).
	admitsWhileDown bool
	// lostInOutage bounds the units a Redis crash may cost beyond one per
	// charge whose reply it lost (a reservation whose reply was lost).
	lostInOutage int
	// settle is how long after traffic stops the charged usage must equal
	// what was admitted (unflushed counts, outstanding blocks).
	settle time.Duration
}

// Lease tolerances: the figures the leases design states
// (docs/quota-leases.md). A sidecar refuses only once it has given back
// what it held and the quota has no free unit, so no request is refused
// while units remain; a block is at most 1/16 of the free units, which is
// what a SIGKILLed sidecar can take with it (counted as used); a sidecar
// holding a block keeps admitting from it, counted, while Redis is down.
const (
	leaseRefusedWhileHeld = 0
	leaseHeldByKilled     = chaosQuota / 16
	leaseSettle           = time.Second // "exact within 1 s after traffic stops"
	leaseAdmitsWhileDown  = true
	leaseLostInOutage     = 0
)

// settleSlack covers a busy machine on top of any settle time: scrapes and
// admin reads take time under -race.
const settleSlack = 2 * time.Second

func toleranceOf(mode string) chaosTolerance {
	if mode == "off" {
		return chaosTolerance{settle: settleSlack}
	}
	return chaosTolerance{refusedWhileHeld: leaseRefusedWhileHeld, heldByKilled: leaseHeldByKilled, settle: leaseSettle + settleSlack,
		admitsWhileDown: leaseAdmitsWhileDown, lostInOutage: leaseLostInOutage}
}

// chaosLeaseModes are the lease modes to run: KEYGATE_TEST_QUOTA_LEASES,
// else def.
func chaosLeaseModes(def ...string) []string {
	if v := os.Getenv("KEYGATE_TEST_QUOTA_LEASES"); v != "" {
		return strings.Split(v, ",")
	}
	return def
}

// chaosEnv is the environment of every chaos sidecar. A generous store
// deadline: the machine is loaded, and a timed-out charge would turn into
// a 503 or an uncounted admission, which the tests tell apart but would
// rather not see when nothing fails.
func chaosEnv(upstream, redisURL, mode, failure string) map[string]string {
	return map[string]string{
		"KEYGATE_UPSTREAM_URL":  upstream,
		"KEYGATE_REDIS_URL":     redisURL,
		"KEYGATE_ADMIN_TOKEN":   testAdminToken,
		"KEYGATE_REDIS_TIMEOUT": "5s",
		"KEYGATE_FAILURE_MODE":  failure,
		"KEYGATE_QUOTA_LEASES":  mode,
	}
}

// idUpstream records the X-Chaos-Id of every request it gets.
type idUpstream struct {
	mu      sync.Mutex
	seen    map[string]int
	arrived atomic.Int64
	// at, when arrived reaches atN, is closed.
	atN  int64
	at   chan struct{}
	hold time.Duration // how long each request takes, to keep some in flight
}

func newIDUpstream(hold time.Duration) *idUpstream {
	return &idUpstream{seen: map[string]int{}, hold: hold}
}

func (u *idUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Chaos-Id")
	u.mu.Lock()
	u.seen[id]++
	at, atN := u.at, u.atN
	u.mu.Unlock()
	if n := u.arrived.Add(1); at != nil && n == atN {
		close(at)
	}
	if u.hold > 0 {
		time.Sleep(u.hold)
	}
	_, _ = w.Write([]byte("ok\n"))
}

// notifyAt returns a channel closed when n more requests have arrived.
func (u *idUpstream) notifyAt(n int64) <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.at, u.atN = make(chan struct{}), u.arrived.Load()+n
	return u.at
}

// ids returns what arrived with the prefix, and fails on an id that
// arrived twice (a request forwarded twice).
func (u *idUpstream) ids(t *testing.T, prefix string) map[string]bool {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]bool{}
	for id, n := range u.seen {
		if !strings.HasPrefix(id, prefix) {
			continue
		}
		if n != 1 {
			t.Errorf("upstream got %s %d times", id, n)
		}
		out[id] = true
	}
	return out
}

// shot is one request and what its client got.
type shot struct {
	id         string
	sidecar    int
	secret     string
	status     int    // 0: transport error (connection reset by a killed sidecar)
	err        string // the transport error, or the body of an answer other than 200/429
	counted    bool
	retryAfter bool
	start, end time.Time
}

// shooter sends chaos requests; one transport for the test, so thousands of
// requests in flight do not each dial a throwaway connection.
type shooter struct {
	client *http.Client
	seq    atomic.Int64
}

func newShooter(t *testing.T) *shooter {
	tr := &http.Transport{MaxIdleConnsPerHost: chaosRequests, IdleConnTimeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return &shooter{client: &http.Client{Transport: tr, Timeout: 20 * time.Second}}
}

func (s *shooter) one(ctx context.Context, prefix string, sc *fleet.Sidecar, i int, secret string) shot {
	sh := shot{id: prefix + strconv.FormatInt(s.seq.Add(1), 10), sidecar: i, secret: secret, start: time.Now()}
	var resp *http.Response
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+sc.Data+"/chaos", nil)
		if err != nil {
			sh.err, sh.end = err.Error(), time.Now()
			return sh
		}
		req.Header.Set("X-API-Key", secret)
		req.Header.Set("X-Chaos-Id", sh.id)
		if resp, err = s.client.Do(req); err == nil {
			break
		}
		var op *net.OpError
		if attempt < 2 && errors.As(err, &op) && op.Op == "dial" && ctx.Err() == nil {
			continue // nothing was sent: the sidecar never saw it
		}
		sh.err, sh.end = err.Error(), time.Now()
		return sh
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	sh.status = resp.StatusCode
	// A counted admission of a limited org carries RateLimit headers; one
	// admitted uncounted (store unreachable, open mode) carries none.
	sh.counted = resp.StatusCode == 200 && resp.Header.Get("RateLimit") != ""
	sh.retryAfter = resp.Header.Get("Retry-After") != ""
	if resp.StatusCode != 200 && resp.StatusCode != 429 {
		sh.err = string(body[:min(len(body), 200)])
	}
	sh.end = time.Now()
	return sh
}

// oddities lists up to five distinct answers other than 200 and 429, for
// failure messages.
func oddities(shots []shot) string {
	seen := map[string]int{}
	var order []string
	for _, s := range shots {
		if s.status == 200 || s.status == 429 {
			continue
		}
		k := fmt.Sprintf("sidecar %d: %d %s", s.sidecar, s.status, s.err)
		if seen[k] == 0 {
			order = append(order, k)
		}
		seen[k]++
	}
	var b strings.Builder
	for i, k := range order {
		if i == 5 {
			break
		}
		fmt.Fprintf(&b, "\n  %d× %s", seen[k], k)
	}
	return b.String()
}

// burst sends n requests at once, round-robin over the sidecars and keys,
// released together, and returns what each got.
func (s *shooter) burst(ctx context.Context, prefix string, f *fleet.Fleet, secrets []string, n int) []shot {
	out := make([]shot, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			sc := i % len(f.Sidecars)
			out[i] = s.one(ctx, prefix, f.Sidecars[sc], sc, secrets[(i/len(f.Sidecars))%len(secrets)])
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// tally counts shots by outcome.
type tally struct {
	ok, counted, uncounted, refused, unavailable, failed, other int
}

func tallyOf(shots []shot) tally {
	var c tally
	for _, s := range shots {
		switch {
		case s.status == 200:
			c.ok++
			if s.counted {
				c.counted++
			} else {
				c.uncounted++
			}
		case s.status == 429:
			c.refused++
		case s.status == 503:
			c.unavailable++
		case s.status == 0:
			c.failed++
		default:
			c.other++
		}
	}
	return c
}

// chaosOrg creates an org with quota chaosQuota and chaosKeys keys through
// sc's operator API, and returns the org id and the keys' secrets.
func chaosOrg(t *testing.T, g *gate) (string, []string) {
	t.Helper()
	perms := map[string][]string{}
	for i := range chaosKeys {
		perms["k"+strconv.Itoa(i)] = []string{"read"}
	}
	org, ks := g.setupOrg(1, chaosQuota, "month", perms)
	var secrets []string
	for i := range chaosKeys {
		secrets = append(secrets, ks["k"+strconv.Itoa(i)].AccessSecret)
	}
	return org, secrets
}

// adminOf is the harness's view of a fleet sidecar, for the operator API.
func adminOf(t *testing.T, sc *fleet.Sidecar) *gate {
	l := listeners{Data: sc.Data, Admin: sc.Admin, Metrics: sc.Metrics}
	registerListeners(t, l)
	return &gate{t: t, l: l, logs: &syncBuffer{}}
}

// settledUsage waits (bounded by within) until the org's charged usage is
// want and returns the last reading. Usage below what was admitted is an
// error at any moment.
func settledUsage(t *testing.T, g *gate, org string, admitted, want int64, within time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		u := orgUsage(t, g, org)
		if u < admitted {
			t.Errorf("usage %d below the %d admitted", u, admitted)
		}
		if u == want || time.Now().After(deadline) {
			return u
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// topUp spends what is left of the org's quota: it sends one request
// through each sidecar not in skip, pass after pass, until a pass where
// every one refused while the operator API shows the quota spent — no
// sidecar then holds a unit, and none is free. It waits between refused
// passes for units held elsewhere to come back (the lease idle return),
// bounded by count and time.
func (s *shooter) topUp(t *testing.T, ctx context.Context, prefix string, f *fleet.Fleet, g *gate, org string, secrets []string, skip map[int]bool, within time.Duration) []shot {
	t.Helper()
	var out []shot
	deadline := time.Now().Add(within)
	for pass := 0; pass < 4*chaosQuota; pass++ {
		refused := true
		for i, sc := range f.Sidecars {
			if skip[i] {
				continue
			}
			sh := s.one(ctx, prefix, sc, i, secrets[pass%len(secrets)])
			out = append(out, sh)
			if sh.status != 429 {
				refused = false
			}
		}
		if refused && orgUsage(t, g, org) >= chaosQuota {
			return out
		}
		if time.Now().After(deadline) {
			t.Errorf("quota not spent within %s of the round: usage %d of %d", within, orgUsage(t, g, org), chaosQuota)
			return out
		}
		if refused {
			time.Sleep(50 * time.Millisecond) // units held elsewhere come back when idle
		}
	}
	t.Errorf("quota not spent after %d passes", 4*chaosQuota)
	return out
}

// TestChaosFleetExactQuota: four sidecars, 2,000 requests at once against
// an org quota of 500, three rounds (a new org each). The upstream gets
// exactly the requests whose clients got 200, never more than 500; every
// other client gets 429 with Retry-After; the operator API and each key's
// account route (its own usage and the org's) never show less than was
// admitted and show exactly that once traffic stops; nothing is
// refused while the quota has units left (beyond the lease mode's stated
// bound), and the quota can be spent to its last unit.
func TestChaosFleetExactQuota(t *testing.T) {
	bin := buildKeygate(t)
	for _, mode := range chaosLeaseModes("auto", "off") {
		t.Run("leases="+mode, func(t *testing.T) {
			tol := toleranceOf(mode)
			up := newIDUpstream(0)
			srv := httptest.NewServer(up)
			defer srv.Close()
			rs := redistest.Start(t)
			f := fleet.Start(t, bin, chaosSidecars, chaosEnv(srv.URL, rs.URL(), mode, "closed"))
			g := adminOf(t, f.Sidecars[0])
			sh := newShooter(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for round := range chaosRounds {
				org, secrets := chaosOrg(t, g)
				prefix := fmt.Sprintf("%s-r%d-", mode, round)
				shots := sh.burst(ctx, prefix, f, secrets, chaosRequests)
				c := tallyOf(shots)
				t.Logf("round %d: %+v", round, c)
				if c.ok+c.refused != chaosRequests {
					t.Errorf("round %d: %+v: want only 200 and 429:%s", round, c, oddities(shots))
				}
				if c.uncounted != 0 {
					t.Errorf("round %d: %d admitted uncounted with Redis up", round, c.uncounted)
				}
				for _, s := range shots {
					if s.status == 429 && !s.retryAfter {
						t.Errorf("429 without Retry-After")
						break
					}
				}
				if c.ok > chaosQuota || c.ok < chaosQuota-tol.refusedWhileHeld {
					t.Errorf("round %d: admitted %d, want %d (at most %d refused while units were held elsewhere)", round, c.ok, chaosQuota, tol.refusedWhileHeld)
				}
				more := sh.topUp(t, ctx, prefix, f, g, org, secrets, nil, tol.settle+settleSlack)
				shots = append(shots, more...)
				admitted := int64(tallyOf(shots).ok)
				checkForwarded(t, up, prefix, shots, nil)
				if admitted != chaosQuota {
					t.Errorf("round %d: %d admitted in all, want the whole quota %d", round, admitted, chaosQuota)
				}
				if u := settledUsage(t, g, org, admitted, admitted, tol.settle); u != admitted {
					t.Errorf("round %d: usage %d after %s, want %d admitted", round, u, tol.settle, admitted)
				}
				checkAccounts(t, f.Sidecars[len(f.Sidecars)-1], shots, secrets, tol.settle)
			}
		})
	}
}

// checkAccounts: each key's account route (seed 002, on sc's data
// listener) shows its own usage and the organization's; neither is ever
// below what was admitted, and both equal it within settle.
func checkAccounts(t *testing.T, sc *fleet.Sidecar, shots []shot, secrets []string, settle time.Duration) {
	t.Helper()
	admitted := map[string]int64{}
	var total int64
	for _, s := range shots {
		if s.status == 200 {
			admitted[s.secret]++
			total++
		}
	}
	deadline := time.Now().Add(settle)
	for {
		exact := true
		for i, secret := range secrets {
			var a struct {
				APIKey struct {
					CurrentUsage int64 `json:"current_usage"`
				} `json:"api_key"`
				Org struct {
					CurrentUsage int64 `json:"current_usage"`
				} `json:"organization_quota"`
			}
			status, _, body := call(t, "GET", "http://"+sc.Data+"/api/v1/account", map[string]string{"X-API-Key": secret}, "")
			if status != 200 || json.Unmarshal(body, &a) != nil {
				t.Fatalf("account of key %d: %d %s", i, status, body)
			}
			if a.APIKey.CurrentUsage < admitted[secret] || a.Org.CurrentUsage < total {
				t.Errorf("account of key %d shows %d of its %d admitted and %d of the org's %d", i, a.APIKey.CurrentUsage, admitted[secret], a.Org.CurrentUsage, total)
				return
			}
			exact = exact && a.APIKey.CurrentUsage == admitted[secret] && a.Org.CurrentUsage == total
		}
		if exact {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("account usage not exact %s after traffic stopped", settle)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkForwarded: the upstream got each admitted request exactly once and
// nothing else, except requests whose client lost the connection to a
// sidecar in killed (it may have forwarded them before it died).
func checkForwarded(t *testing.T, up *idUpstream, prefix string, shots []shot, killed map[int]bool) {
	t.Helper()
	got := up.ids(t, prefix)
	byID := map[string]shot{}
	for _, s := range shots {
		byID[s.id] = s
		if s.status == 200 && !got[s.id] {
			t.Errorf("%s got 200 but never reached the upstream", s.id)
		}
	}
	var extra []string
	for id := range got {
		s, ok := byID[id]
		switch {
		case !ok:
			extra = append(extra, id+" (never sent)")
		case s.status == 200:
		case s.status == 0 && killed[s.sidecar]:
			// forwarded by the sidecar that was killed before it answered
		default:
			extra = append(extra, fmt.Sprintf("%s (client got %d)", id, s.status))
		}
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		t.Errorf("the upstream got %d requests that were not admitted: %v", len(extra), extra[:min(len(extra), 10)])
	}
}

// TestChaosSidecarKilled: four sidecars, 2,000 requests at once against a
// quota of 500; one sidecar is killed with SIGKILL when a fifth of the
// quota has reached the upstream, in each of two rounds (a new org and a
// fresh victim each). The upstream never gets more than 500; it gets every
// request whose client got 200, and else only requests the killed sidecar
// had forwarded before it died; the survivors answer only 200 or 429. The
// units the killed sidecar charged or held count as used, never free: once
// the survivors have spent the rest, the quota is spent, and what is
// missing from 500 is at most the killed sidecar's lost requests (plus
// the units a lease mode lets it hold).
func TestChaosSidecarKilled(t *testing.T) {
	bin := buildKeygate(t)
	for _, mode := range chaosLeaseModes("auto") {
		t.Run("leases="+mode, func(t *testing.T) {
			tol := toleranceOf(mode)
			up := newIDUpstream(2 * time.Millisecond) // keeps requests in flight at the kill
			srv := httptest.NewServer(up)
			defer srv.Close()
			rs := redistest.Start(t)
			f := fleet.Start(t, bin, chaosSidecars, chaosEnv(srv.URL, rs.URL(), mode, "closed"))
			g := adminOf(t, f.Sidecars[chaosSidecars-1]) // never a victim
			sh := newShooter(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for round := range 2 {
				victim := round
				org, secrets := chaosOrg(t, g)
				prefix := fmt.Sprintf("kill-%s-r%d-", mode, round)
				at := up.notifyAt(chaosQuota / 5)
				killed := make(chan struct{})
				go func() {
					defer close(killed)
					select {
					case <-at:
						f.Sidecars[victim].Kill()
					case <-ctx.Done():
					}
				}()
				shots := sh.burst(ctx, prefix, f, secrets, chaosRequests)
				<-killed
				c := tallyOf(shots)
				lostOnVictim := 0
				for _, s := range shots {
					switch {
					case s.sidecar == victim && s.status == 0:
						lostOnVictim++
					case s.status != 200 && s.status != 429:
						t.Errorf("sidecar %d answered %d %s (victim %d)", s.sidecar, s.status, s.err, victim)
					}
				}
				t.Logf("round %d, sidecar %d killed: %+v", round, victim, c)
				if lostOnVictim == 0 {
					t.Errorf("round %d: the kill did not land mid-round (no request of the victim lost)", round)
				}
				if u := orgUsage(t, g, org); u > chaosQuota || u < int64(c.ok) {
					t.Errorf("round %d: usage %d right after the round, want %d..%d", round, u, c.ok, chaosQuota)
				}
				skip := map[int]bool{victim: true}
				shots = append(shots, sh.topUp(t, ctx, prefix, f, g, org, secrets, skip, tol.settle+settleSlack)...)
				checkForwarded(t, up, prefix, shots, skip)
				forwarded := len(up.ids(t, prefix))
				notForwarded := 0
				got := up.ids(t, prefix)
				for _, s := range shots {
					if s.sidecar == victim && s.status == 0 && !got[s.id] {
						notForwarded++
					}
				}
				if forwarded > chaosQuota {
					t.Errorf("round %d: the upstream got %d, quota %d", round, forwarded, chaosQuota)
				}
				if lost := chaosQuota - forwarded; lost > notForwarded+tol.heldByKilled {
					t.Errorf("round %d: %d units never reached the upstream; the killed sidecar lost %d requests and may hold %d: units came back neither as admissions nor as free", round, lost, notForwarded, tol.heldByKilled)
				}
				if u := orgUsage(t, g, org); u != chaosQuota {
					t.Errorf("round %d: usage %d after the quota was spent, want %d", round, u, chaosQuota)
				}
				f.Replace(t, victim)
			}
		})
	}
}

// reconnectGrace is how long after Redis answers PING again a request may
// still start and fail over a connection its sidecar had before the crash.
const reconnectGrace = time.Second

// TestChaosRedisKilled: four sidecars with a credential cache warmed up
// and 64 clients in a loop; Redis (appendonly yes, appendfsync always) is
// killed with SIGKILL when a fifth of the quota has been admitted, stays
// down 1.5 s and restarts on the same port with its data. The store
// deadline (KEYGATE_REDIS_TIMEOUT) is 1 s, shorter than the outage so that
// requests during it fail, and long enough that a busy machine does not
// time charges out once Redis is back: a timed-out charge is an outage to
// keygate (503 or uncounted), and would be one outside the window here. In both failure
// modes no more than 500 requests are admitted counted (RateLimit headers)
// and charged usage never falls below them; the upstream gets exactly the
// requests whose clients got 200. Closed: refusals (503) only during the
// outage, nothing uncounted. Open: uncounted admissions (200 without
// RateLimit headers, keygate_fail_open_admits_total) only during the
// outage, as many as the metric says.
func TestChaosRedisKilled(t *testing.T) {
	const (
		outage  = 1500 * time.Millisecond
		workers = 64
		maxLoad = 20000 // requests, whatever the outage's length
	)
	bin := buildKeygate(t)
	for _, mode := range chaosLeaseModes("auto") {
		for _, failure := range []string{"closed", "open"} {
			t.Run("leases="+mode+"/failure="+failure, func(t *testing.T) {
				tol := toleranceOf(mode)
				up := newIDUpstream(0)
				srv := httptest.NewServer(up)
				defer srv.Close()
				rs := redistest.StartDurable(t)
				env := chaosEnv(srv.URL, rs.URL(), mode, failure)
				env["KEYGATE_REDIS_TIMEOUT"] = "1s"
				f := fleet.Start(t, bin, chaosSidecars, env)
				g := adminOf(t, f.Sidecars[0])
				sh := newShooter(t)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				org, secrets := chaosOrg(t, g)
				prefix := "redis-" + mode + "-" + failure + "-"

				// Every sidecar verifies every key first: in open mode a
				// key must be known to be admitted while Redis is down.
				var shots []shot
				for i, sc := range f.Sidecars {
					for _, secret := range secrets {
						shots = append(shots, sh.one(ctx, prefix, sc, i, secret))
					}
				}
				at := up.notifyAt(chaosQuota / 5)
				stop := make(chan struct{})
				var mu sync.Mutex
				var sent, afterRestart atomic.Int64
				var restarted atomic.Bool
				enough := make(chan struct{})
				var enoughOnce sync.Once
				var wg sync.WaitGroup
				for w := range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for n := w; sent.Add(1) <= maxLoad; n += workers {
							select {
							case <-stop:
								return
							default:
							}
							i := n % chaosSidecars
							s := sh.one(ctx, prefix, f.Sidecars[i], i, secrets[(n/chaosSidecars)%len(secrets)])
							mu.Lock()
							shots = append(shots, s)
							mu.Unlock()
							if restarted.Load() && afterRestart.Add(1) == 2000 {
								enoughOnce.Do(func() { close(enough) })
							}
						}
						enoughOnce.Do(func() { close(enough) }) // out of requests
					}()
				}
				select {
				case <-at:
				case <-time.After(20 * time.Second):
					close(stop)
					wg.Wait()
					t.Fatalf("a fifth of the quota was not admitted within 20s: %+v", tallyOf(shots))
				}
				rs.Stop() // SIGKILL
				killAt := time.Now()
				time.Sleep(outage) // the outage's length is the test's choice
				downUntil := time.Now()
				rs.Restart()
				upAt := time.Now()
				restarted.Store(true)
				select {
				case <-enough: // 2,000 requests after the restart
				case <-time.After(20 * time.Second):
				}
				close(stop)
				wg.Wait()
				mu.Lock()
				load := tallyOf(shots)
				mu.Unlock()
				t.Logf("%s mode, Redis down %s: %+v", failure, outage, load)
				shots = append(shots, sh.topUp(t, ctx, prefix, f, g, org, secrets, nil, tol.settle+settleSlack)...)
				c := tallyOf(shots)

				inOutage := func(s shot) bool { return !s.end.Before(killAt) && s.start.Before(upAt.Add(reconnectGrace)) }
				countedDown := 0 // sent after the kill, answered before the restart
				for _, s := range shots {
					switch {
					case s.status == 200 && s.counted:
						if s.start.After(killAt) && s.end.Before(downUntil) {
							countedDown++
						}
					case s.status == 429:
					case s.status == 200 && failure == "open", s.status == 503 && failure == "closed":
						if !inOutage(s) {
							t.Errorf("%s: %d (counted %v) outside the outage: sent %s after the kill, answered %s after it; Redis back %s after it",
								s.id, s.status, s.counted, s.start.Sub(killAt), s.end.Sub(killAt), upAt.Sub(killAt))
						}
					default:
						t.Errorf("%s: status %d (counted %v) in %s mode: %s", s.id, s.status, s.counted, failure, s.err)
					}
				}
				if c.counted > chaosQuota {
					t.Errorf("%d admitted counted, quota %d", c.counted, chaosQuota)
				}
				if countedDown > 0 && !tol.admitsWhileDown {
					t.Errorf("%d admitted counted while Redis was down", countedDown)
				}
				var failOpen float64
				for _, sc := range f.Sidecars {
					n, err := sc.Metric(ctx, "keygate_fail_open_admits_total")
					if err != nil {
						t.Fatal(err)
					}
					failOpen += n
				}
				switch failure {
				case "closed":
					if c.uncounted != 0 || failOpen != 0 {
						t.Errorf("closed mode: %d admitted uncounted, keygate_fail_open_admits_total %v", c.uncounted, failOpen)
					}
					if c.unavailable == 0 && countedDown == 0 {
						t.Error("closed mode: no 503 during the outage: the outage was not seen")
					}
				case "open":
					if c.uncounted == 0 && countedDown == 0 {
						t.Error("open mode: nothing admitted uncounted: the outage was not seen")
					}
					if failOpen != float64(c.uncounted) {
						t.Errorf("open mode: %d admitted uncounted, keygate_fail_open_admits_total %v", c.uncounted, failOpen)
					}
				}
				checkForwarded(t, up, prefix, shots, nil)
				// A charge whose reply the crash lost was counted by Redis
				// but answered 503 (closed) or admitted uncounted (open).
				lostReplies := int64(c.unavailable+c.uncounted) + int64(tol.lostInOutage)
				u := orgUsage(t, g, org)
				if u < int64(c.counted) || u > chaosQuota || u > int64(c.counted)+lostReplies {
					t.Errorf("usage %d after recovery, want %d counted admissions (up to %d more for replies the crash lost) and at most %d", u, c.counted, lostReplies, chaosQuota)
				}
				t.Logf("%d counted in all (%d while Redis was down), %d units charged for lost replies", c.counted, countedDown, u-int64(c.counted))
			})
		}
	}
}
