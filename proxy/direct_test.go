package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/sidecar"
)

// The direct path (bodiless GET, HEAD and OPTIONS to a plain-HTTP upstream,
// forwarded on pooled connections by the handler itself) must be
// indistinguishable from the ReverseProxy path for the upstream and for the
// client.

// received is what an upstream received.
type received struct {
	method, uri, host, proto string
	header                   http.Header
}

// recordingUpstream answers every request with a fixed answer and records
// what it received.
func recordingUpstream(t *testing.T) (*httptest.Server, func() []received) {
	var mu sync.Mutex
	var got []received
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, received{r.Method, r.RequestURI, r.Host, r.Proto, r.Header.Clone()})
		mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Up", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Keygate-Usage", "egress=0")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "hello "+r.URL.Path)
		}
	}))
	t.Cleanup(up.Close)
	return up, func() []received {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// gateTo serves a sidecar in front of upstreamURL (with base path) on a
// loopback listener; transport non-nil forces the ReverseProxy path.
func gateTo(t *testing.T, upstreamURL string, transport http.RoundTripper) (string, string) {
	t.Helper()
	u, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	e := sidecartest.New(t, sidecar.Options{Upstream: u, Transport: transport})
	secret := e.SetupOrg(t, 1, 1000, nil, benchOrg)
	front := httptest.NewServer(e.Data)
	t.Cleanup(front.Close)
	return front.URL, secret
}

// rawExchange sends raw on a fresh connection to base and returns the
// answer's status line and header block, and its body.
func rawExchange(t *testing.T, base, raw string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(raw, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

func TestDirectPathSameAsReverseProxy(t *testing.T) {
	requests := []string{
		"GET /a/b?x=1&y=%%20 HTTP/1.1\r\nHost: client.example\r\nX-API-Key: %s\r\nAccept: */*\r\n\r\n",
		// Hop-by-hop headers, those Connection names, forwarding headers a
		// client made up, identity headers it made up, TE: trailers.
		"GET /c HTTP/1.1\r\nHost: client.example\r\nX-API-Key: %s\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers, deflate\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Keygate-Org-Id: forged\r\nUser-Agent: ua/1\r\n\r\n",
		"HEAD /h HTTP/1.1\r\nHost: client.example\r\nX-API-Key: %s\r\n\r\n",
		"OPTIONS /o HTTP/1.1\r\nHost: client.example\r\nX-API-Key: %s\r\n\r\n",
		// A bearer token keygate consumed does not reach the upstream.
		"GET /bearer HTTP/1.1\r\nHost: client.example\r\nAuthorization: Bearer %s\r\n\r\n",
	}
	type answer struct {
		status int
		header http.Header
		body   string
	}
	run := func(transport http.RoundTripper) ([]received, []answer) {
		up, got := recordingUpstream(t)
		base, secret := gateTo(t, up.URL+"/base", transport)
		var answers []answer
		for i, raw := range requests {
			resp, body := rawExchange(t, base, fmt.Sprintf(raw, secret))
			if resp.StatusCode != 200 {
				t.Errorf("request %d: %d %s", i, resp.StatusCode, body)
			}
			h := resp.Header.Clone()
			h.Del("Date")
			answers = append(answers, answer{resp.StatusCode, h, body})
		}
		return got(), answers
	}
	directSeen, directAnswers := run(nil)
	proxySeen, proxyAnswers := run(http.DefaultTransport.(*http.Transport).Clone())
	if len(directSeen) != len(requests) || len(proxySeen) != len(requests) {
		t.Fatalf("upstream saw %d (direct) and %d (ReverseProxy) of %d requests", len(directSeen), len(proxySeen), len(requests))
	}
	for i := range requests {
		d, p := directSeen[i], proxySeen[i]
		// Identity headers name the key, which differs between the two
		// sidecars; their presence and names must not.
		for _, h := range []http.Header{d.header, p.header} {
			for k := range h {
				if strings.HasPrefix(k, "X-Keygate-") {
					h[k] = []string{"<set>"}
				}
			}
			h.Del("Accept-Encoding") // http.Transport may add it; the direct path never does
		}
		if fmt.Sprint(d) != fmt.Sprint(p) {
			t.Errorf("request %d: the upstream saw\n direct:       %v\n ReverseProxy: %v", i, d, p)
		}
		if got := d.header.Get("X-Keygate-Org-Id"); got != "<set>" {
			t.Errorf("request %d: identity header %q", i, got)
		}
		for _, h := range []string{"X-Api-Key", "Authorization", "X-Hop", "Keep-Alive", "Connection", "Forwarded"} {
			if _, ok := d.header[h]; ok {
				t.Errorf("request %d: %s reached the upstream on the direct path", i, h)
			}
		}
		if got := d.header.Get("X-Forwarded-For"); got != "127.0.0.1" {
			t.Errorf("request %d: X-Forwarded-For %q, want the peer's address alone", i, got)
		}
		da, pa := directAnswers[i], proxyAnswers[i]
		for _, a := range []answer{da, pa} {
			a.header.Del("Ratelimit")
			a.header.Del("Ratelimit-Policy")
			a.header.Del("Ratelimit-Remaining")
			a.header.Del("Ratelimit-Reset")
		}
		if fmt.Sprint(da) != fmt.Sprint(pa) {
			t.Errorf("request %d: the client got\n direct:       %v\n ReverseProxy: %v", i, da, pa)
		}
		if _, ok := da.header["X-Keygate-Usage"]; ok {
			t.Errorf("request %d: X-Keygate-Usage reached the client", i)
		}
		if _, ok := da.header["Keep-Alive"]; ok {
			t.Errorf("request %d: the upstream's Keep-Alive reached the client", i)
		}
	}
	if !strings.HasPrefix(directSeen[0].uri, "/base/a/b?x=1&y=%20") || directSeen[2].method != "HEAD" {
		t.Errorf("upstream saw %q %q", directSeen[0].uri, directSeen[2].method)
	}
	if _, ok := directSeen[0].header["User-Agent"]; ok {
		t.Errorf("a User-Agent reached the upstream for a client that sent none: %q", directSeen[0].header["User-Agent"])
	}
}

// oneShotUpstream answers one request per connection with keep-alive
// framing, then closes the connection: every pooled connection is stale by
// the time it is used again. It counts the connections it accepted.
func oneShotUpstream(t *testing.T, answer string) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_ = req.Body.Close()
				_, _ = io.WriteString(c, answer)
			}()
		}
	}()
	return "http://" + ln.Addr().String(), &conns
}

func TestDirectPathRetriesStaleConnection(t *testing.T) {
	upURL, conns := oneShotUpstream(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	base, secret := gateTo(t, upURL, nil)
	for i := range 5 {
		resp, body := rawExchange(t, base, "GET /x HTTP/1.1\r\nHost: h\r\nX-API-Key: "+secret+"\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d on a pooled connection the upstream closed: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n < 5 {
		t.Fatalf("upstream accepted %d connections for 5 requests it answered one per connection", n)
	}
}

func TestDirectPathUpstreamFailures(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		base, secret := gateTo(t, "http://"+addr, nil)
		if resp, _ := rawExchange(t, base, "GET / HTTP/1.1\r\nHost: h\r\nX-API-Key: "+secret+"\r\n\r\n"); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("upstream down: %d, want 502", resp.StatusCode)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		upURL, _ := oneShotUpstream(t, "NOT HTTP\r\n\r\n")
		base, secret := gateTo(t, upURL, nil)
		if resp, _ := rawExchange(t, base, "GET / HTTP/1.1\r\nHost: h\r\nX-API-Key: "+secret+"\r\n\r\n"); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("malformed answer: %d, want 502", resp.StatusCode)
		}
	})
	t.Run("endless headers", func(t *testing.T) {
		var head strings.Builder
		head.WriteString("HTTP/1.1 200 OK\r\n")
		for i := range 40000 { // 2 MiB of headers, past the 1 MiB bound
			fmt.Fprintf(&head, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", 40))
		}
		head.WriteString("Content-Length: 2\r\n\r\nok")
		upURL, _ := oneShotUpstream(t, head.String())
		base, secret := gateTo(t, upURL, nil)
		if resp, _ := rawExchange(t, base, "GET / HTTP/1.1\r\nHost: h\r\nX-API-Key: "+secret+"\r\n\r\n"); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("2 MiB of upstream headers: %d, want 502", resp.StatusCode)
		}
	})
	t.Run("body cut short", func(t *testing.T) {
		upURL, _ := oneShotUpstream(t, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
		base, secret := gateTo(t, upURL, nil)
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: h\r\nX-API-Key: "+secret+"\r\n\r\n")
		// The connection is aborted: before the status line (the answer
		// was still buffered) or in the body, never a whole-looking answer.
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("a body the upstream cut short reached the client whole-looking: %d %q", resp.StatusCode, b)
			}
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Fatalf("got %v, want the connection aborted", err)
		}
	})
	t.Run("client leaves while the upstream thinks", func(t *testing.T) {
		upstreamDone := make(chan error, 1)
		thinking := make(chan struct{})
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(thinking)
			select {
			case <-r.Context().Done(): // keygate closed its connection
				upstreamDone <- nil
			case <-time.After(10 * time.Second):
				upstreamDone <- errors.New("keygate kept the upstream connection 10s after its client left")
			}
		}))
		t.Cleanup(up.Close)
		base, secret := gateTo(t, up.URL, nil)
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: h\r\nX-API-Key: "+secret+"\r\n\r\n")
		select {
		case <-thinking:
		case <-time.After(10 * time.Second):
			t.Fatal("the request did not reach the upstream")
		}
		conn.Close()
		if err := <-upstreamDone; err != nil {
			t.Fatal(err)
		}
	})
}

func TestDirectPathStreamsEvents(t *testing.T) {
	next := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	base, secret := gateTo(t, up.URL, nil)
	req, _ := http.NewRequestWithContext(context.Background(), "GET", base+"/events", nil)
	req.Header.Set("X-API-Key", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		// Each event arrives before the upstream sends the next: the
		// direct path flushes a stream on every write.
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		_, _ = br.ReadString('\n')
		next <- struct{}{}
	}
}

func TestDirectPathTrailers(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	}))
	t.Cleanup(up.Close)
	base, secret := gateTo(t, up.URL, nil)
	req, _ := http.NewRequest("GET", base+"/t", nil)
	req.Header.Set("X-API-Key", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("body %q trailer %v", b, resp.Trailer)
	}
}

func TestDirectPathBooksUsageAsReverseProxy(t *testing.T) {
	for _, c := range []struct {
		name, connection string
		want             int64
	}{
		{"reported", "", 5},
		// Listed in Connection, the header is hop-by-hop: neither path books it.
		{"hop-by-hop", "X-Keygate-Usage", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if c.connection != "" {
					w.Header().Set("Connection", c.connection)
				}
				w.Header().Set("X-Keygate-Usage", "widgets=5")
				_, _ = io.WriteString(w, "ok")
			}))
			t.Cleanup(up.Close)
			u, _ := url.Parse(up.URL)
			for _, transport := range []http.RoundTripper{nil, http.DefaultTransport.(*http.Transport).Clone()} {
				e := sidecartest.New(t, sidecar.Options{Upstream: u, Transport: transport})
				secret := e.SetupOrg(t, 1, 1000, nil, benchOrg)
				if got := sidecartest.Get(e.Data, secret); got != 200 {
					t.Fatalf("status %d", got)
				}
				e.Book.Flush(context.Background())
				got, err := e.Manage.Counter().Meters(context.Background(), benchOrg, time.Now(), []quota.Meter{meter.ForName("widgets", quota.PeriodMonth)})
				if err != nil {
					t.Fatal(err)
				}
				if got[0] != c.want {
					t.Errorf("direct path %t: widgets booked %d, want %d", transport == nil, got[0], c.want)
				}
			}
		})
	}
}
