package main

import (
	"net/http/httptest"
	"testing"
	"time"
)

// TestShutdownDelay: after SIGTERM (here: the context ending) keygate fails
// /readyz at once but keeps serving the data path for KEYGATE_SHUTDOWN_DELAY,
// so a load balancer can stop routing to it before it stops accepting.
func TestShutdownDelay(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_SHUTDOWN_DELAY": "1s"})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
	if status, _, _ := call(t, "GET", "http://"+g.l.Metrics+"/readyz", nil, ""); status != 200 {
		t.Fatalf("readyz before shutdown: %d", status)
	}

	stopped := make(chan error, 1)
	begun := time.Now()
	go func() { stopped <- g.stop() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, _, _ := call(t, "GET", "http://"+g.l.Metrics+"/readyz", nil, "")
		if status == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("readyz still ready 5s after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status, _, body := call(t, "GET", "http://"+g.l.Data+"/", hdr, ""); status != 200 {
		t.Errorf("data path during the shutdown delay: %d %s", status, body)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("stopped with %v", err)
		}
		if d := time.Since(begun); d < time.Second {
			t.Errorf("stopped after %s, before the 1s shutdown delay", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not stopped 10s after the shutdown began")
	}
}
