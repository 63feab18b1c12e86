package proxy

import (
	"context"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

// Options configure a Handler. Upstream, Gate and Book are required.
type Options struct {
	// Upstream is the backend requests are forwarded to.
	Upstream *url.URL
	// Gate decides whether a request may pass.
	Gate *gate.Decider
	// Book receives the ingress, egress and upstream-reported usage.
	Book *meter.Book
	// UpstreamTimeout bounds the wait for the upstream's response headers
	// (default 60s); past it the client gets 504.
	UpstreamTimeout time.Duration
	// WriteTimeout bounds the client's stalls (default 30s): each read of a
	// forwarded request body must progress within it, and the Writer renews
	// its write deadline by it. A stream (SSE) or a large upload lasts as
	// long as the client keeps it moving; a client that stalls cannot hold a
	// connection (and an upstream one) for ever.
	WriteTimeout time.Duration
	// TrustedProxies are the peers whose X-Forwarded-For is kept and
	// appended to; from any other peer it is replaced by the peer's address.
	TrustedProxies guard.TrustedProxies
	// Transport replaces the upstream transport (tests).
	Transport http.RoundTripper
	Log       *zap.Logger
	Metrics   *metrics.Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Handler is the data path: every request the listener does not answer
// itself is decided by the gate and, when admitted, forwarded. It is safe
// for concurrent use; create it with New.
type Handler struct {
	opt     Options
	log     *zap.Logger
	buffers *bufferPool
	forward *httputil.ReverseProxy
	// direct forwards the common request itself (direct.go); nil when the
	// upstream is not plain HTTP or a test supplies the transport.
	direct *direct
}

// New returns a Handler for o. A missing required option is a programming
// error in the caller and panics here, at construction, rather than on the
// first request.
func New(o Options) *Handler {
	if o.Upstream == nil || o.Gate == nil || o.Book == nil {
		panic("proxy.New: Options.Upstream, Gate and Book are required")
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = 60 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	h := &Handler{opt: o, log: o.Log.Named("proxy"), buffers: newBufferPool()}
	h.forward = h.newReverseProxy()
	if o.Transport == nil {
		h.direct = newDirect(o.Upstream, o.UpstreamTimeout)
	}
	return h
}

// Serve is the data path: decision (credential → principal → permission →
// charge) → forward.
func (h *Handler) Serve(w *listener.Writer, r *http.Request) {
	now := h.opt.Now()
	req := gate.RequestOf(r, now)
	v, err := h.opt.Gate.Decide(r.Context(), &req)
	w.Org, w.Key = v.Principal.Key.OrgID, v.Principal.Key.UID
	if err != nil {
		w.Fail(r, err, now, h.log)
		return
	}
	v.SetHeaders(w.Header(), now)
	w.Outcome = metrics.OutcomeAdmitted
	w.WouldLimit = v.WouldLimit()
	// One allocation carries the verdict to Rewrite and ModifyResponse.
	info := &forwardInfo{v: v, at: now}
	p := &info.v.Principal
	org := p.Key.OrgID
	if r.Body != nil && r.Body != http.NoBody {
		body := &requestBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: h.opt.WriteTimeout, info: info}
		if r.ContentLength > 0 {
			h.opt.Book.Add(org, quota.Meter{Name: meter.Ingress, Period: info.v.Period}, r.ContentLength, now, p.Plan.Limits)
		} else {
			body.book = h.opt.Book // length unknown: count as it is read
		}
		r.Body = body
	}
	w.CountEgress = true
	if h.direct != nil && eligible(r) {
		h.serveDirect(w, r, info)
	} else {
		h.forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), forwardKey{}, info)))
	}
	if w.Egress > 0 {
		h.opt.Book.Add(org, quota.Meter{Name: meter.Egress, Period: info.v.Period}, w.Egress, now, p.Plan.Limits)
	}
}
