package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseRedisInfo(t *testing.T) {
	info := "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.750000\r\nused_cpu_sys_children:9.000000\r\n\r\n" +
		"# Commandstats\r\ncmdstat_evalsha:calls=100,usec=900,usec_per_call=9.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_get:calls=300,usec=30,usec_per_call=0.10\r\ncmdstat_info:calls=7,usec=70\r\n"
	got := parseRedisInfo(info)
	if got.cpu != 2 || got.calls != 400 {
		t.Errorf("parseRedisInfo = %+v, want cpu 2 (children not counted) and 400 calls (INFO not counted)", got)
	}
}

// keyCounter is an upstream that counts requests per X-API-Key.
type keyCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (k *keyCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.n[r.Header.Get("X-API-Key")]++
	k.mu.Unlock()
}

// hotShare returns the number of requests and the share of them that went
// to the first 1 % of keys.
func (k *keyCounter) hotShare(keys []string) (int, float64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	total, hot := 0, 0
	for i, key := range keys {
		total += k.n[key]
		if i < len(keys)/100 {
			hot += k.n[key]
		}
	}
	return total, float64(hot) / float64(max(total, 1))
}

func testKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	return keys
}

// TestTrafficShapes: cycled traffic spreads requests evenly over the keys;
// skewed traffic sends about 80 % to the first 1 % — through the Go
// generator and, when installed, through wrk and its script.
func TestTrafficShapes(t *testing.T) {
	keys := testKeys(200)
	gens := map[string]func(addr string, skew bool) (result, error){
		"go": func(addr string, skew bool) (result, error) { return loadGo(addr, keys, skew, 4, time.Second) },
	}
	if _, err := exec.LookPath("wrk"); err == nil {
		m := &meter{dir: t.TempDir()}
		gens["wrk"] = func(addr string, skew bool) (result, error) { return m.loadWrk(addr, keys, skew, 2, time.Second) }
	}
	for name, gen := range gens {
		for _, skew := range []bool{false, true} {
			kc := &keyCounter{n: map[string]int{}}
			srv := httptest.NewServer(kc)
			r, err := gen(strings.TrimPrefix(srv.URL, "http://"), skew)
			srv.Close()
			if err != nil || r.failed != 0 {
				t.Fatalf("%s: %v, %v failed", name, err, r.failed)
			}
			total, share := kc.hotShare(keys)
			if total < 2*len(keys) {
				t.Logf("%s skew=%v: only %d requests; shape not checked", name, skew, total)
				continue
			}
			want := 0.01
			if skew {
				want = 0.8
			}
			if share < want-0.08 || share > want+0.08 { // over 4 standard deviations at 400 requests
				t.Errorf("%s skew=%v: %.3f of %d requests to the first 1%% of keys, want about %.2f", name, skew, share, total, want)
			}
			if !skew {
				kc.mu.Lock()
				counts := make([]int, 0, len(keys))
				for _, k := range keys {
					counts = append(counts, kc.n[k])
				}
				kc.mu.Unlock()
				// Each generator thread cycles from its own offset: no key
				// is sent more than a few times the fewest.
				if lo, hi := slices.Min(counts), slices.Max(counts); lo == 0 || hi > lo+8 {
					t.Errorf("%s cycled: per-key counts from %d to %d", name, lo, hi)
				}
			}
		}
	}
}

func TestWrkScriptWritten(t *testing.T) {
	m := &meter{dir: t.TempDir()}
	keys := testKeys(3)
	p, err := m.script(keys, true)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := m.script(keys, true); again != p {
		t.Errorf("a second script for the same keys: %s, %s", p, again)
	}
	b, err := os.ReadFile(p)
	if err != nil || !strings.Contains(string(b), filepath.Join(m.dir, "keys-1.txt")) || !strings.Contains(string(b), "local skew = true") {
		t.Errorf("script %s: %v\n%s", p, err, b)
	}
}
