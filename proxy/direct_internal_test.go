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
