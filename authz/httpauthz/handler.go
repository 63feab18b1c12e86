package httpauthz

import (
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/metrics"
)

// Options configure a Handler. Gate is required.
type Options struct {
	// Gate decides whether a request may pass: the data path's decision.
	Gate *gate.Decider
	// RejectNonCanonical refuses a non-canonical original path instead of
	// deciding on its canonical form (KEYGATE_PATH_NORMALIZE=reject), as the
	// data listener does.
	RejectNonCanonical bool
	Log                *zap.Logger
	Metrics            *metrics.Metrics
	// Now is the clock (default the Gate's).
	Now func() time.Time
}

// Handler is the HTTP authorization endpoint: every request it receives, on
// any path, is an authorization check. It is safe for concurrent use;
// create it with New.
type Handler struct {
	opt    Options
	log    *zap.Logger
	access *zap.Logger
}

// New returns a Handler for o. A missing Gate is a programming error in
// the caller and panics here, at construction.
func New(o Options) *Handler {
	if o.Gate == nil {
		panic("httpauthz.New: Options.Gate is required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = o.Gate.Now
	}
	return &Handler{opt: o, log: o.Log.Named("authz_http"), access: o.Log.Named("access")}
}

// ServeHTTP decides the request r describes: 200 with the identity and
// RateLimit headers and no body, or the data path's refusal. The body of r,
// if any, is not read: it is not the client's (proxies send none) and the
// decision does not need it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := h.opt.Now()
	sw := listener.NewWriter(w)
	o, err := ParseOriginal(r, h.opt.RejectNonCanonical)
	if err == nil {
		err = h.decide(sw, r, &o, now)
	}
	if err != nil {
		sw.Fail(r, err, now, h.log)
	}
	path := o.Path
	if path == "" {
		path = r.URL.Path // refused before the original was read
	}
	method := o.Method
	if method == "" {
		method = r.Method
	}
	listener.Finish(h.access, h.opt.Metrics, metrics.FrontAuthzHTTP, method, path, &sw.Record, h.opt.Now().Sub(now))
}

// Header values of every admitted answer, shared: net/http only reads them.
var (
	noStore    = []string{"no-store"}
	zeroLength = []string{"0"}
)

// decide runs the decision for o and, when it admits, answers 200.
func (h *Handler) decide(w *listener.Writer, r *http.Request, o *Original, now time.Time) error {
	req := gate.Request{
		Method:     o.Method,
		Path:       o.Path,
		RawPath:    o.RawPath,
		RawQuery:   o.RawQuery,
		Header:     r.Header,
		RemoteAddr: r.RemoteAddr,
		Time:       now,
	}
	v, err := h.opt.Gate.Decide(r.Context(), &req)
	w.Org, w.Key = v.Principal.Key.OrgID, v.Principal.Key.UID
	if err != nil {
		return err
	}
	w.Outcome = metrics.OutcomeAdmitted
	w.WouldLimit = v.WouldLimit()
	hdr := w.Header()
	gate.SetIdentity(hdr, &v.Principal)
	v.SetHeaders(hdr, now)
	hdr["Cache-Control"] = noStore
	hdr["Content-Length"] = zeroLength
	w.WriteHeader(http.StatusOK)
	return nil
}
