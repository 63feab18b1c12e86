package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/sidecar"
)

// Per-write deadlines on the data listener: a client that stops reading
// cannot hold a connection (and the upstream's) for ever, while a slow
// upstream and a stream with long pauses are not cut short.

const testWriteTimeout = 200 * time.Millisecond

// deadlineGate serves a sidecar with a short write timeout in front of
// upstream, on real loopback connections, and returns its URL and a key.
func deadlineGate(t *testing.T, upstream http.Handler) (string, string) {
	t.Helper()
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	e := sidecartest.New(t, sidecar.Options{
		Upstream:        u,
		Metrics:         metrics.NewMetrics(prometheus.NewRegistry(), 10),
		UpstreamTimeout: 5 * testWriteTimeout,
		WriteTimeout:    testWriteTimeout,
	})
	secret := e.SetupOrg(t, 1, 1000, nil, "0f3b8f0e-1111-4c6e-9a53-000000000001")
	front := httptest.NewServer(e.Data)
	t.Cleanup(front.Close)
	return front.URL, secret
}

func TestStalledClientIsCutOff(t *testing.T) {
	upstreamDone := make(chan struct{})
	base, secret := deadlineGate(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(upstreamDone)
		chunk := []byte(strings.Repeat("x", 32<<10))
		// Endless body: only keygate giving up on the client ends it. Bounded
		// so a broken keygate fails the test instead of hanging it.
		for range 1 << 16 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := io.WriteString(conn, "GET /download HTTP/1.1\r\nHost: x\r\nX-API-Key: "+secret+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Never read: keygate's writes block once the buffers are full, and the
	// write deadline must end them.
	select {
	case <-upstreamDone:
	case <-time.After(20 * time.Second):
		t.Fatal("a client that stopped reading still holds its connection and the upstream's after 20s")
	}
}

func TestSlowUpstreamAndPausedStreamNotCut(t *testing.T) {
	pause := 3 * testWriteTimeout
	base, secret := deadlineGate(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			// Headers later than the write timeout, within the upstream timeout.
			time.Sleep(pause)
			_, _ = io.WriteString(w, "late\n")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			if i > 0 {
				time.Sleep(pause) // a quiet stream, longer than the write timeout
			}
			_, _ = io.WriteString(w, "data: tick\n\n")
			_ = http.NewResponseController(w).Flush()
		}
	}))
	get := func(path string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		req.Header.Set("X-API-Key", secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: reading: %v (after %q)", path, err, b.String())
		}
		return resp.StatusCode, b.String()
	}
	if status, body := get("/slow"); status != 200 || body != "late\n" {
		t.Errorf("slow upstream: %d %q", status, body)
	}
	if status, body := get("/events"); status != 200 || body != strings.Repeat("data: tick\n\n", 3) {
		t.Errorf("paused stream: %d %q", status, body)
	}
	// Keep-alive: the next request on a connection whose last deadline has
	// passed still gets its answer.
	time.Sleep(2 * testWriteTimeout)
	if status, body := get("/slow"); status != 200 || body != "late\n" {
		t.Errorf("reused connection after its deadline passed: %d %q", status, body)
	}
}

func TestStalledUploadIsCutOff(t *testing.T) {
	upstreamDone := make(chan error, 1)
	base, secret := deadlineGate(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		upstreamDone <- err
	}))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A chunked upload that sends one chunk and then stalls.
	req := "POST /upload HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-upstreamDone:
		if err == nil {
			t.Fatal("the upstream read a complete body from a stalled upload")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a client that stalled mid-upload still holds its connection and the upstream's after 20s")
	}
}

func TestSlowButSteadyUploadCompletes(t *testing.T) {
	got := make(chan int, 1)
	base, secret := deadlineGate(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- len(b)
	}))
	pr, pw := io.Pipe()
	go func() {
		// 8 pieces, each well within the timeout of the last, twice as
		// long as the timeout in all.
		for range 8 {
			time.Sleep(testWriteTimeout / 4)
			if _, err := pw.Write([]byte("0123456789")); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", base+"/upload", pr)
	req.Header.Set("X-API-Key", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || <-got != 80 {
		t.Fatalf("steady upload: status %d", resp.StatusCode)
	}
}

func TestStalledSelfServedBodyIsCutOff(t *testing.T) {
	base, secret := deadlineGate(t, http.NotFoundHandler())
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Announces 100 bytes of JSON, sends 1, then stalls.
	req := "POST /api/v0/key HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		var ne net.Error
		if !errors.As(err, &ne) {
			t.Fatalf("reading: %v", err)
		}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a self-served request with a stalled body still holds its handler after 20s (got %q)", b)
	}
}
