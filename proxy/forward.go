package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

const (
	// headerUsage is how the upstream reports metered usage; it never
	// reaches the client.
	headerUsage = "X-Keygate-Usage"
)

// newTransport returns the upstream transport: a clone of the default with
// timeouts and enough idle connections for a sidecar that talks to one
// backend at high concurrency.
func newTransport(upstreamTimeout time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 0 // no global cap; the per-host cap below applies
	t.MaxIdleConnsPerHost = 512
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = upstreamTimeout
	t.DisableCompression = true // pass bodies through as the upstream sent them
	t.ForceAttemptHTTP2 = false
	t.MaxResponseHeaderBytes = maxResponseHeaderBytes // as on the direct path
	return t
}

func (h *Handler) newReverseProxy() *httputil.ReverseProxy {
	transport := h.opt.Transport
	if transport == nil {
		transport = newTransport(h.opt.UpstreamTimeout)
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			info, _ := pr.In.Context().Value(forwardKey{}).(*forwardInfo)
			h.rewrite(pr, info)
		},
		Transport: &timedTransport{next: transport, m: h.opt.Metrics},
		// Streamed responses (SSE, or no Content-Length) are flushed on every
		// write by ReverseProxy itself; others go out in as few writes as
		// possible.
		FlushInterval: 0,
		BufferPool:    h.buffers,
		ModifyResponse: func(resp *http.Response) error {
			if info, ok := resp.Request.Context().Value(forwardKey{}).(*forwardInfo); ok {
				h.bookUsage(resp.Header, info)
			}
			return nil
		},
		ErrorHandler: h.upstreamFailed,
	}
}

// rewrite makes the upstream's request (pr.Out, a copy of pr.In without
// hop-by-hop and forwarding headers) out of the client's: the upstream's
// URL, the client's Host, no credential and no client-sent identity
// header, fresh X-Forwarded-* headers, and the identity keygate vouches for
// (info; nil when the request was not decided, which the data path never
// forwards).
func (h *Handler) rewrite(pr *httputil.ProxyRequest, info *forwardInfo) {
	pr.SetURL(h.opt.Upstream)
	pr.Out.Host = pr.In.Host // the backend sees the host the client asked for
	gate.StripInbound(pr.Out.Header, info != nil && info.v.Bearer)
	// X-Forwarded-Host and -Proto from the request itself; then
	// X-Forwarded-For: the peer's address alone when it is not a trusted
	// proxy (what it sent is its own invention), the chain behind it when
	// it is.
	pr.SetXForwarded()
	if fwd := guard.ForwardedFor(pr.In.RemoteAddr, pr.In.Header["X-Forwarded-For"], h.opt.TrustedProxies); fwd != "" {
		pr.Out.Header["X-Forwarded-For"] = []string{fwd}
	} else {
		delete(pr.Out.Header, "X-Forwarded-For")
	}
	if info != nil {
		gate.SetIdentity(pr.Out.Header, &info.v.Principal)
	}
}

// upstreamFailed answers a request the upstream did not answer: 499 when
// the client went away, 400 when the client's body broke on the way, 504
// on a timeout, 502 otherwise.
func (h *Handler) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		if sw, ok := w.(*listener.Writer); ok {
			sw.Outcome = metrics.OutcomeClientClosed
		}
		w.WriteHeader(gate.StatusClientClosed)
		return
	}
	var ne net.Error
	if sw, ok := w.(*listener.Writer); ok && sw.BodyFailed() {
		// The client's body broke while it was sent on: not an upstream
		// fault, and not the upstream's error metric.
		err = errors.Join(gate.ErrBodyUnreadable, err)
	} else if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		err = errors.Join(gate.ErrUpstreamTimeout, err)
	} else {
		err = errors.Join(gate.ErrUpstream, err)
	}
	p := gate.Classify(err, h.opt.Now())
	if sw, ok := w.(*listener.Writer); ok {
		sw.CountEgress = false // an error body is not the upstream's egress
		sw.Outcome = p.Outcome
	}
	if p.Outcome == metrics.OutcomeUpstreamError || p.Outcome == metrics.OutcomeUpstreamTimeout {
		h.log.Warn("upstream failed", zap.String("path", r.URL.Path), zap.Error(err))
	}
	gate.WriteDataProblem(w, p)
}

// bufferPool recycles the copy buffers of ReverseProxy, which otherwise
// allocates 32 KiB per request.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) } // httputil.BufferPool's shape: one allocation per Put

// get and put are the same pool without that allocation, for the direct
// path, which keeps the pointer it got.
func (b *bufferPool) get() *[]byte  { return b.p.Get().(*[]byte) }
func (b *bufferPool) put(v *[]byte) { b.p.Put(v) }

// timedTransport measures the upstream's time to response headers.
type timedTransport struct {
	next http.RoundTripper
	m    *metrics.Metrics
}

func (t *timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	t.m.Upstream(time.Since(start))
	return resp, err
}

// forwardKey carries a forwarded request's forwardInfo through its context.
type forwardKey struct{}

// forwardInfo is what Rewrite and ModifyResponse need to know of a request
// the data path admitted.
type forwardInfo struct {
	v  gate.Verdict
	at time.Time
}

// requestBody wraps the body of a forwarded request. It keeps the
// connection's read deadline timeout ahead of every read, so a client that
// stalls mid-upload cannot hold the connection (and an upstream one) for
// ever, and clears it at the end of the body so it cannot fire later while
// the response streams. When book is set (the length was not known up
// front) it books the ingress bytes as they are read.
type requestBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	book    *meter.Book
	info    *forwardInfo
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.timeout > 0 {
		// Renewed on every read (reads come per buffer, not per byte), so
		// each wait for the client gets the whole timeout.
		_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout)) // unsupported by test recorders: fine
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.book != nil {
		p := &b.info.v.Principal
		b.book.Add(p.Key.OrgID, quota.Meter{Name: meter.Ingress, Period: b.info.v.Period}, int64(n), b.info.at, p.Plan.Limits)
	}
	// At the end of the body the deadline goes, so it cannot fire while the
	// response streams; after a failed read it stays, so net/http's
	// draining of the unread rest cannot hang on a stalled client either.
	if errors.Is(err, io.EOF) && b.timeout > 0 {
		_ = b.rc.SetReadDeadline(time.Time{})
		b.timeout = 0
	}
	return n, err
}

// bookUsage books the meters the upstream reports in X-Keygate-Usage and
// removes the header before the response reaches the client.
func (h *Handler) bookUsage(header http.Header, info *forwardInfo) {
	values := header[headerUsage]
	if len(values) == 0 {
		return
	}
	delete(header, headerUsage)
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			name, delta, ok := meter.ParseItem(item)
			if !ok {
				h.log.Debug("ignoring malformed X-Keygate-Usage item", zap.String("item", item))
				continue
			}
			h.opt.Book.Add(info.v.Principal.Key.OrgID, meter.ForName(name, info.v.Period), delta, info.at, info.v.Principal.Plan.Limits)
		}
	}
}
