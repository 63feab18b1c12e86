package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestEligible(t *testing.T) {
	for _, c := range []struct {
		raw  string
		want bool
	}{
		{"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"OPTIONS /x HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"GET /x?a=1&b=2 HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n", false},                    // not replayable
		{"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", false}, // not replayable
		{"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab", false},
		{"GET /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false},
		{"GET /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", false},
		{"GET /x?a=1;b=2 HTTP/1.1\r\nHost: h\r\n\r\n", false},
	} {
		r, err := http.ReadRequest(bufioReader(c.raw))
		if err != nil {
			t.Fatalf("%q: %v", c.raw, err)
		}
		if got := eligible(r); got != c.want {
			t.Errorf("eligible(%q) = %t, want %t", c.raw, got, c.want)
		}
	}
	if newDirect(&url.URL{Scheme: "https", Host: "h"}, time.Second) != nil {
		t.Error("a TLS upstream took the direct path")
	}
}

func TestDirectPoolReusesConnections(t *testing.T) {
	var conns atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	d := newDirect(u, 5*time.Second)
	t.Cleanup(d.closeIdle)
	for i := range 3 {
		out, _ := http.NewRequest("GET", up.URL+"/x", nil)
		resp, c, err := d.roundTrip(context.Background(), out)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "ok" {
			t.Fatalf("request %d: %q %v", i, b, err)
		}
		if !c.unwatch() {
			t.Fatal("the watch fired without the context ending")
		}
		d.put(c)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("3 sequential requests opened %d upstream connections, want 1", n)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestDirectPoolClosesIdleConnections: a connection left idle past the
// idle timeout is closed without a request coming to find it, so an idle
// sidecar holds no upstream connections; one in use meanwhile is kept.
func TestDirectPoolClosesIdleConnections(t *testing.T) {
	closed := make(chan struct{}, 8)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	d := newDirect(u, 5*time.Second)
	d.idleTimeout = 100 * time.Millisecond
	t.Cleanup(d.closeIdle)
	roundTrip := func() *upConn {
		out, _ := http.NewRequest("GET", up.URL+"/x", nil)
		resp, c, err := d.roundTrip(context.Background(), out)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		c.unwatch()
		return c
	}
	first, second := roundTrip(), roundTrip() // two connections, both busy
	d.put(first)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("an idle pooled connection was still open 5 s after its idle timeout")
	}
	d.mu.Lock()
	n := len(d.idle)
	d.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d connections still pooled after the sweep, want 0", n)
	}
	// The connection that was busy during the sweep is pooled and reused.
	d.put(second)
	c := roundTrip()
	if c != second {
		t.Error("the connection put back after the sweep was not reused")
	}
	d.put(c)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the sweep was not armed again for the next idle connection")
	}
}
