package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// TestRedisPausedNeverStalls: with Redis frozen by SIGSTOP, no request waits
// longer than KEYGATE_REDIS_TIMEOUT plus 50ms, in either failure mode.
func TestRedisPausedNeverStalls(t *testing.T) {
	const timeout = 150 * time.Millisecond
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			up := httptest.NewServer(&recorder{})
			defer up.Close()
			srv := redistest.Start(t)
			g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(),
				"KEYGATE_REDIS_TIMEOUT": timeout.String(), "KEYGATE_FAILURE_MODE": mode, "KEYGATE_LOG_LEVEL": "warn"})
			_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
			hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
			if status, _, _ := call(t, "GET", "http://"+g.l.Data+"/", hdr, ""); status != 200 {
				t.Fatal("warm-up failed")
			}
			srv.Pause()
			t.Cleanup(srv.Resume)
			want := map[string]int{"open": 200, "closed": 503}[mode]
			var wg sync.WaitGroup
			var fromBlock atomic.Int64
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					start := time.Now()
					status, _, body := call(t, "GET", "http://"+g.l.Data+"/", hdr, "")
					if d := time.Since(start); d > timeout+50*time.Millisecond {
						t.Errorf("request took %s with Redis paused (deadline %s)", d, timeout)
					}
					// With quota leases, a closed sidecar admits from the
					// block it holds (counted) before answering 503.
					if status == 200 && mode == "closed" {
						fromBlock.Add(1)
						return
					}
					if status != want {
						t.Errorf("status %d, want %d: %s", status, want, body)
					}
				}()
			}
			wg.Wait()
			if fromBlock.Load() > 8 {
				t.Errorf("closed mode admitted %d requests with Redis paused, more than the block it held", fromBlock.Load())
			}
		})
	}
}

// TestRedisKilledUnderLoad kills and restarts Redis while requests flow:
// no panic, no request stalls past the deadline, only the statuses the
// failure mode promises, and counting is exact again after recovery.
func TestRedisKilledUnderLoad(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			up := httptest.NewServer(&recorder{})
			defer up.Close()
			srv := redistest.StartDurable(t)
			g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(),
				"KEYGATE_REDIS_TIMEOUT": timeout.String(), "KEYGATE_FAILURE_MODE": mode, "KEYGATE_LOG_LEVEL": "error"})
			org, ks := g.setupOrg(1, 1000000, "month", map[string][]string{"k": {"read"}})
			hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
			allowed := map[int]bool{200: true}
			if mode == "closed" {
				allowed[503] = true
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var mu sync.Mutex
			statuses := map[int]int{}
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 2000 && ctx.Err() == nil; i++ {
						start := time.Now()
						status := quickGet(ctx, "http://"+g.l.Data+"/", hdr)
						if status == 0 {
							return // ctx ended
						}
						if d := time.Since(start); d > timeout+100*time.Millisecond {
							t.Errorf("request took %s during the outage", d)
						}
						mu.Lock()
						statuses[status]++
						mu.Unlock()
					}
				}()
			}
			time.Sleep(300 * time.Millisecond) // traffic before the crash
			srv.Stop()
			time.Sleep(500 * time.Millisecond) // traffic during the outage
			srv.Restart()
			time.Sleep(300 * time.Millisecond) // traffic after recovery
			cancel()
			wg.Wait()
			for s, n := range statuses {
				if !allowed[s] {
					t.Errorf("%d requests got %d in %s mode", n, s, mode)
				}
			}
			if statuses[200] == 0 {
				t.Fatal("no request admitted")
			}

			// After recovery every admitted request is counted exactly once.
			before := orgUsage(t, g, org)
			for range 10 {
				if status, _, body := call(t, "GET", "http://"+g.l.Data+"/", hdr, ""); status != 200 {
					t.Fatalf("after recovery: %d %s", status, body)
				}
			}
			if after := orgUsage(t, g, org); after != before+10 {
				t.Errorf("usage after recovery %d, want %d", after, before+10)
			}
			if strings.Contains(g.logs.String(), "panic") {
				t.Errorf("panic in the log")
			}
		})
	}
}

func quickGet(ctx context.Context, url string, hdr map[string]string) int {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func orgUsage(t *testing.T, g *gate, org string) int64 {
	t.Helper()
	var view struct {
		Usage struct {
			CurrentUsage int64 `json:"current_usage"`
		} `json:"usage"`
	}
	g.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &view)
	return view.Usage.CurrentUsage
}

// TestGatewayOnCluster runs the data path against a three-master Redis
// Cluster through a cluster URL.
func TestGatewayOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	addrs := cl.Addrs()
	url := "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2]
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": url, "KEYGATE_REDIS_TIMEOUT": "2s"})
	for i := range 3 { // several orgs land on different slots
		_, ks := g.setupOrg(int64(i+1), 5, "month", map[string][]string{"k": {"read"}})
		hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
		for j := range 6 {
			status, _, body := call(t, "GET", "http://"+g.l.Data+"/", hdr, "")
			if want := map[bool]int{true: 200, false: 429}[j < 5]; status != want {
				t.Fatalf("org %d request %d: %d %s", i, j, status, body)
			}
		}
	}
	if rec.count() != 15 {
		t.Errorf("upstream saw %d, want 15", rec.count())
	}
}
